//! The mapping playground's API (analyst role): the live mapping files, the golden cases,
//! an order as QUBS has it now, one run of a mapping on an input, and the golden cases run — each against the live set
//! or against a draft of one file edited in the browser, never written to disk here.
//!
//! A run goes through [`crate::mapping::preview::preview`] (what gRPC `PreviewMapping`
//! calls) and the golden cases through [`crate::mapping::golden::run`] (what
//! `qubs-bridge mappings test` calls); a draft is compiled by
//! [`MappingSet::from_texts`], so its errors are those of `mappings check`, at
//! file:line:col.
//!
//! The answer of a run has a `trace` member: for each output field, the rule (file:line),
//! the alternative taken, the source values, each filter step, table hits and `when`
//! decisions ([`crate::mapping::trace`]). `fields` says, from the mapping's rules, which
//! output fields each input field feeds, and `ruleReads` which input fields each rule
//! reads, named as the trace names the rule: with both, the page goes from an output field
//! to its inputs and from an input field to the output fields it fed in this run.
//!
//! A golden case's differing output can be accepted as its new expectation, one at a time
//! ([`golden_accept`]); the playground can also take its input from a result in the outbox
//! ([`outbox_input`]: the message as received — patient data, shown, never logged).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{record, storage};
use super::auth::Caller;
use super::{Console, Refusal, error, refuse};
use crate::mapping::ir::UseKind;
use crate::mapping::yaml::{self, Node};
use crate::mapping::{Diagnostic, FieldFate, InputKind, LoadErrors, MappingSet, golden};
use crate::orders::{Include, Order};
use crate::outbox::Source;
use crate::pending_list::PendingListError;

/// Largest input or draft the playground takes.
const MAX_TEXT: usize = 2 * 1024 * 1024;

fn kind_name(k: InputKind) -> &'static str {
    match k {
        InputKind::Order => "order",
        InputKind::Oru => "oru",
        InputKind::DiagnosticReport => "diagnostic_report",
    }
}

/// The mapping files directly in `dir`, as [`MappingSet::load_dir`] reads them.
fn mapping_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One mapping file edited in the browser.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Draft {
    /// The file's name in the mapping directory, e.g. `orm_o01.yaml`.
    file: String,
    text: String,
}

impl Draft {
    pub(super) fn new(file: String, text: String) -> Draft {
        Draft { file, text }
    }

    pub(super) fn file(&self) -> &str {
        &self.file
    }

    pub(super) fn text(&self) -> &str {
        &self.text
    }
}

fn diagnostics(errors: &LoadErrors) -> Value {
    Value::Array(
        errors
            .0
            .iter()
            .map(|d: &Diagnostic| {
                json!({
                    "file": file_name(&d.file),
                    "line": d.pos.line,
                    "column": d.pos.column,
                    "message": d.message,
                    "hint": d.hint,
                })
            })
            .collect(),
    )
}

/// The set to run: the live one, or the live files with `draft` in place of its file.
/// `Err` is the answer to give (the draft's diagnostics, or a bad request).
pub(super) fn set_for(
    console: &Console,
    draft: Option<&Draft>,
) -> Result<Arc<MappingSet>, Refusal> {
    let Some(draft) = draft else {
        return Ok(console.mappings.current());
    };
    if draft.text.len() > MAX_TEXT {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the draft is too large",
        ));
    }
    let dir = console.mappings.dir();
    let files = mapping_files(dir).map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot read the mapping directory: {e}"),
        )
    })?;
    if !files.iter().any(|f| file_name(f) == draft.file) {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            &format!("no mapping file `{}` in the mapping directory", draft.file),
        ));
    }
    let mut texts = Vec::with_capacity(files.len());
    for f in files {
        let text = if file_name(&f) == draft.file {
            draft.text.clone()
        } else {
            std::fs::read_to_string(&f).map_err(|e| {
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot read {}: {e}", file_name(&f)),
                )
            })?
        };
        texts.push((f, text));
    }
    MappingSet::from_texts(&texts).map(Arc::new).map_err(|e| {
        Refusal::from(
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({
                    "error": format!("the draft of {} does not compile", draft.file),
                    "diagnostics": diagnostics(&e),
                })),
            )
                .into_response(),
        )
    })
}

/// `GET /console/api/mappings`: the live set's version and each mapping with its file.
pub async fn mappings(State(console): State<Arc<Console>>) -> Response {
    let set = console.mappings.current();
    let mut list = Vec::new();
    for name in set.names() {
        let Some(m) = set.get(name) else { continue };
        list.push(json!({
            "name": name,
            "input": kind_name(m.input),
            "file": file_name(&m.file),
            "text": std::fs::read_to_string(&m.file).unwrap_or_default(),
        }));
    }
    Json(json!({
        "version": set.version(),
        "reloadError": console.mappings.failing(),
        "mappings": list,
    }))
    .into_response()
}

/// `GET /console/api/cases`: the golden cases (`mappings/tests/<case>/case.yaml`) with their
/// input, the mappings they check and the site time zone they run with.
pub async fn cases(State(console): State<Arc<Console>>) -> Response {
    let dir = console.mappings.dir().join("tests");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Json(json!({"cases": []})).into_response();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("case.yaml").is_file())
        .collect();
    dirs.sort();
    let cases: Vec<Value> = dirs.iter().filter_map(|d| case(d)).collect();
    Json(json!({"cases": cases})).into_response()
}

fn case(dir: &Path) -> Option<Value> {
    let spec = yaml::parse(&std::fs::read_to_string(dir.join("case.yaml")).ok()?).ok()?;
    let text = |k: &str| spec.get(k).and_then(Node::scalar_text);
    let input_file = text("input")?;
    let bytes = std::fs::read(dir.join(&input_file)).ok()?;
    let mappings: Vec<String> = match spec.get("outputs").map(|n| &n.kind) {
        Some(yaml::Kind::Seq(outputs)) => outputs
            .iter()
            .filter_map(|o| o.get("mapping").and_then(Node::scalar_text))
            .collect(),
        _ => Vec::new(),
    };
    Some(json!({
        "name": file_name(dir),
        "kind": text("kind").unwrap_or_else(|| "order".into()),
        "inputFile": input_file,
        // HL7 in another charset is shown as read; the bridge decodes it on the wire.
        "input": String::from_utf8_lossy(&bytes),
        "siteTimeZone": spec.get("site").and_then(|s| s.get("timeZone")).and_then(Node::scalar_text),
        "mappings": mappings,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderQuery {
    domain: String,
    id: String,
}

/// `GET /console/api/order?domain=&id=`: an order as QUBS has it now, assembled as the
/// mappings read it (the document `GetOrder` and the feed map), for the playground.
pub async fn live_order(
    State(console): State<Arc<Console>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<OrderQuery>,
) -> Response {
    let id = q.id.trim();
    if id.is_empty() || id.chars().count() > 200 {
        return error(
            StatusCode::BAD_REQUEST,
            "give an appointment id (at most 200 characters)",
        );
    }
    if !console.domains.contains(&q.domain) || !caller.user.may_see(&q.domain) {
        return error(
            StatusCode::FORBIDDEN,
            &format!("domain `{}` is not one of yours", q.domain),
        );
    }
    let (appointment, listed) = match console.pending.appointment(&q.domain, id).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                &format!(
                    "appointment {id} is not in QUBS's pending reporting list for domain {}",
                    q.domain
                ),
            );
        }
        Err(PendingListError::Qubs(e)) => return qubs_failed(&e),
        Err(PendingListError::Store(e)) => return super::api::storage(e),
    };
    let include = Include {
        comments: true,
        attachments: true,
    };
    match Order::assemble(console.pending.client(), &q.domain, appointment, include).await {
        Ok(order) => {
            let document = order.to_json(&console.config_values);
            Json(json!({
                "input": serde_json::to_string_pretty(&document).unwrap_or_default(),
                "listed": listed,
            }))
            .into_response()
        }
        Err(e) => qubs_failed(&e),
    }
}

/// QUBS failed: its problem (types, statuses and ids, no patient data) as a 502.
fn qubs_failed(e: &crate::qubs::Error) -> Response {
    error(StatusCode::BAD_GATEWAY, &format!("QUBS: {e}"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunRequest {
    mapping: String,
    input: String,
    #[serde(default)]
    site_time_zone: String,
    #[serde(default)]
    draft: Option<Draft>,
}

/// `POST /console/api/preview {"mapping", "input", "siteTimeZone"?, "draft"?}`: one run.
pub async fn preview(State(console): State<Arc<Console>>, Json(req): Json<RunRequest>) -> Response {
    if req.input.len() > MAX_TEXT {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "the input is too large");
    }
    let set = match set_for(&console, req.draft.as_ref()) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let run = tokio::task::spawn_blocking(move || {
        let run = crate::mapping::preview::preview(
            &set,
            &req.mapping,
            &req.input,
            &req.site_time_zone,
            &console.config_values,
            true,
        );
        (
            run,
            field_uses(&set, &req.mapping),
            rule_reads(&set, &req.mapping),
        )
    })
    .await;
    match run {
        Ok((Ok(p), fields, reads)) => {
            let mut v = serde_json::to_value(&p).unwrap_or(Value::Null);
            v["fields"] = fields;
            v["ruleReads"] = reads;
            Json(v).into_response()
        }
        Ok((Err(e), _, _)) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the mapping run failed"),
    }
}

/// What the mapping's rules do with each input field (what `qubs-bridge mappings fields`
/// prints): the output fields it is written to, those it only decides, or why it is not
/// sent. Read from the rules, not from this run: the engine's trace will say which rule
/// and fallback each output field came from.
fn field_uses(set: &MappingSet, mapping: &str) -> Value {
    let Some(fates) = set.field_fates(mapping) else {
        return Value::Array(Vec::new());
    };
    Value::Array(
        fates
            .into_iter()
            .map(|(field, fate)| match fate {
                FieldFate::Sent(targets) => {
                    json!({"field": field, "fate": "sent", "targets": targets})
                }
                FieldFate::Used(targets) => {
                    json!({"field": field, "fate": "used", "targets": targets})
                }
                FieldFate::NotSent(reason) => {
                    json!({"field": field, "fate": "not_sent", "reason": reason})
                }
                FieldFate::Unaccounted => json!({"field": field, "fate": "unaccounted"}),
            })
            .collect(),
    )
}

/// The input fields each rule reads, by the rule's name in the trace (`orm_o01.yaml:264:9`):
/// `{"field", "use"}` with `use` `sent` (the value comes from it) or `decides` (a `when`,
/// a filter choosing items, the time zone of a time).
fn rule_reads(set: &MappingSet, mapping: &str) -> Value {
    let mut out = serde_json::Map::new();
    let Some(m) = set.get(mapping) else {
        return Value::Object(out);
    };
    for u in &m.uses {
        let Some(rule) = &u.rule else { continue };
        let kind = match u.kind {
            UseKind::Sent => "sent",
            UseKind::Decides => "decides",
            UseKind::Iterates => continue,
        };
        let reads = out
            .entry(rule.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        let read = json!({"field": u.field, "use": kind});
        if let Value::Array(list) = reads
            && !list.contains(&read)
        {
            list.push(read);
        }
    }
    Value::Object(out)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct GoldenRequest {
    draft: Option<Draft>,
}

/// `POST /console/api/golden {"draft"?}`: every golden case against the live set or the
/// draft, with a line diff per failing output.
pub async fn golden_run(
    State(console): State<Arc<Console>>,
    Json(req): Json<GoldenRequest>,
) -> Response {
    let set = match set_for(&console, req.draft.as_ref()) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let dir = console.mappings.dir().join("tests");
    let report = tokio::task::spawn_blocking(move || golden::run(&set, &dir, false)).await;
    match report {
        Ok(Ok(report)) => Json(golden_json(&report)).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the golden run failed"),
    }
}

/// A golden run as the page shows it: counts, and each output with its diff.
pub(super) fn golden_json(report: &golden::GoldenReport) -> Value {
    let failed = report.results.iter().filter(|r| !r.passed).count();
    json!({
        "passed": report.passed(),
        "total": report.results.len(),
        "failed": failed,
        "results": report.results.iter().map(|r| json!({
            "name": r.name,
            "case": r.case,
            "status": r.status.as_str(),
            "passed": r.passed,
            "diff": r.detail,
        })).collect::<Vec<_>>(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptRequest {
    /// The case output, as a golden run names it: `order-routine-ct/orm_o01.hl7`.
    name: String,
    /// The draft whose output becomes the expectation; the live set when absent.
    #[serde(default)]
    draft: Option<Draft>,
}

/// Why one case output could not be accepted.
enum NotAccepted {
    NoCase(String),
    NoOutput(String),
    AlreadyMatches,
    /// The runner offered nothing to accept: an expected error, a mapping that failed.
    Refused(String),
    Run(golden::GoldenError),
}

/// What accepting wrote.
struct Accepted {
    /// The fields that differed (empty for an output without expectation before).
    fields: Vec<String>,
    new: bool,
}

/// Runs the case of `name` twice: once to see what differs, once accepting that one
/// output (and no other) as [`golden::run_cases`] writes an accepted expectation for
/// `mappings test --update`: this run's output, with the case's own clock and control id,
/// written atomically.
fn accept_blocking(set: &MappingSet, dir: &Path, name: &str) -> Result<Accepted, NotAccepted> {
    let Some((case, _)) = name.split_once('/') else {
        return Err(NotAccepted::NoOutput(name.to_string()));
    };
    let cases = golden::case_names(dir).map_err(NotAccepted::Run)?;
    if !cases.iter().any(|c| c == case) {
        return Err(NotAccepted::NoCase(case.to_string()));
    }
    let only = [case.to_string()];
    let looked = golden::run_cases(set, dir, &only, &mut |_| false).map_err(NotAccepted::Run)?;
    let Some(before) = looked.results.iter().find(|r| r.name == name) else {
        let has: Vec<&str> = looked.results.iter().map(|r| r.name.as_str()).collect();
        return Err(NotAccepted::NoOutput(format!(
            "{name} (case {case} has: {})",
            has.join(", ")
        )));
    };
    if before.passed {
        return Err(NotAccepted::AlreadyMatches);
    }
    let fields: Vec<String> = before.diffs.iter().map(|d| d.path.clone()).collect();
    let new = before.status == golden::Status::New;
    let written =
        golden::run_cases(set, dir, &only, &mut |p| p.name == name).map_err(NotAccepted::Run)?;
    match written.results.iter().find(|r| r.name == name) {
        Some(r) if r.updated => Ok(Accepted { fields, new }),
        Some(r) => Err(NotAccepted::Refused(r.detail.clone().unwrap_or_else(
            || "the golden runner offered no output to accept".into(),
        ))),
        None => Err(NotAccepted::NoOutput(name.to_string())),
    }
}

/// `POST /console/api/golden/accept {"name", "draft"?}`: one differing case output becomes
/// its case's new expectation (the output of the draft when given, else of the live set);
/// audited. The file is one of the case's, under `mappings/tests/<case>/`.
pub async fn golden_accept(
    State(console): State<Arc<Console>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<AcceptRequest>,
) -> Response {
    // Cases are written by promotions too (accepting changed outputs): one at a time.
    let _one_at_a_time = console.promotions.lock().await;
    let set = match set_for(&console, req.draft.as_ref()) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let against = match &req.draft {
        Some(d) => format!("the draft of {}", d.file()),
        None => format!("the live set {}", set.version()),
    };
    let dir = console.mappings.dir().join("tests");
    let name = req.name.trim().to_string();
    let worker = name.clone();
    let done = tokio::task::spawn_blocking(move || accept_blocking(&set, &dir, &worker)).await;
    let accepted = match done {
        Ok(Ok(a)) => a,
        Ok(Err(NotAccepted::NoCase(case))) => {
            return error(StatusCode::NOT_FOUND, &format!("no golden case `{case}`"));
        }
        Ok(Err(NotAccepted::NoOutput(what))) => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("no golden case output {what}; name one as `<case>/<expected file>`"),
            );
        }
        Ok(Err(NotAccepted::AlreadyMatches)) => {
            return error(
                StatusCode::CONFLICT,
                &format!("{name} already matches with {against}: nothing to accept"),
            );
        }
        Ok(Err(NotAccepted::Refused(why))) => {
            return error(
                StatusCode::CONFLICT,
                &format!("{name} has no output to accept: {why}"),
            );
        }
        Ok(Err(NotAccepted::Run(e))) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
        }
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "accepting the output failed",
            );
        }
    };
    // Field names only: the values are the case's patient data.
    let changed = if accepted.new {
        "a first expectation".to_string()
    } else if accepted.fields.is_empty() {
        "changed lines".to_string()
    } else {
        format!("fields {}", accepted.fields.join(", "))
    };
    record(
        &console,
        &caller,
        "golden.accept",
        name.clone(),
        format!("{changed}; output of {against}"),
        "ok",
    )
    .await;
    tracing::info!(user = %caller.user.name, case_output = %name, "console: golden expectation accepted");
    Json(json!({
        "name": name,
        "accepted": true,
        "new": accepted.new,
        "fields": accepted.fields,
        "against": against,
    }))
    .into_response()
}

/// `GET /console/api/outbox/{id}/input`: the message outbox result `id` came in, as a
/// playground input (`oru` or `diagnostic_report`). Patient data: for the analyst's screen,
/// never logged.
pub async fn outbox_input(
    State(console): State<Arc<Console>>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<i64>,
) -> Response {
    let entry = match console.outbox.entry(id).await {
        Ok(Some(e)) if caller.user.may_see(&e.domain) => e,
        Ok(_) => return error(StatusCode::NOT_FOUND, &format!("no outbox entry {id}")),
        Err(e) => return storage(e),
    };
    let (source, body) = match console.outbox.message(id).await {
        Ok(Some(m)) => m,
        Ok(None) => return error(StatusCode::NOT_FOUND, &format!("no outbox entry {id}")),
        Err(e) => return storage(e),
    };
    let (kind, input) = match source {
        // As the bridge read it off the wire: in whatever charset it came.
        Source::Hl7 => ("oru", crate::hl7::charset::decode(&body).text.into_owned()),
        Source::Fhir => (
            "diagnostic_report",
            String::from_utf8_lossy(&body).into_owned(),
        ),
        Source::Report => {
            return error(
                StatusCode::CONFLICT,
                &format!(
                    "outbox entry {id} came in as a report submission, which no mapping reads"
                ),
            );
        }
    };
    Json(json!({
        "id": id,
        "kind": kind,
        "input": input,
        "domain": entry.domain,
        "appointmentId": entry.appointment_id,
        "sourceId": entry.source_id,
        "group": entry.group,
    }))
    .into_response()
}
