//! Safe promotion of a mapping draft (analyst role): the draft must compile, and every
//! golden case must still match — or the analyst accepts the changed outputs, which then
//! become the cases' new expectations. The file is written atomically and the live set
//! reloaded by [`LiveMappings::reload`] (the reload a file edit triggers, which keeps the
//! last good set on failure; here a failed reload also puts the old file back). Every
//! promotion and rollback is kept in the [`super::history`] with both texts, and audited.
//!
//! **Several replicas.** The file is written in *this* replica's mapping directory and only
//! this replica's live set is reloaded. Other replicas take the new version when their own
//! directory changes (a shared directory with `mappings.watch`, or the file deployed to
//! them); the console does not push it. What the console does guarantee across replicas:
//! the history is the cluster's (the shared store), a promotion is refused on a replica
//! whose file is still the text another replica's latest version replaced (it would
//! silently undo that version), and of two replicas promoting the same file at once only
//! one records — the other puts its old file back and answers 409.
//!
//! [`LiveMappings::reload`]: crate::live_mappings::LiveMappings::reload

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{record, storage};
use super::auth::Caller;
use super::history::{NewVersion, Recorded, Version};
use super::playground::{Draft, golden_json, set_for};
use super::{Console, Refusal, error, refuse};
use crate::mapping::MappingSet;
use crate::mapping::golden::{self, write_atomically};

/// What putting a file in place did.
struct Applied {
    set_before: String,
    set_after: String,
    before_text: String,
}

/// Writes `text` as mapping file `file` and reloads the live set; on a failed reload puts
/// the old text back (and reloads again). `Err` is the answer to give.
fn apply(console: &Console, file: &str, text: &str) -> Result<Applied, Refusal> {
    let path = console.mappings.dir().join(file);
    let before_text = std::fs::read_to_string(&path).map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot read {file}: {e}"),
        )
    })?;
    let set_before = console.mappings.current().version().to_string();
    write_atomically(&path, text).map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot write {file}: {e}"),
        )
    })?;
    match console.mappings.reload() {
        Ok(set_after) => Ok(Applied {
            set_before,
            set_after,
            before_text,
        }),
        Err(errors) => {
            // Something else in the directory changed meanwhile: leave it as it was.
            let restored = write_atomically(&path, &before_text).is_ok();
            let _ = console.mappings.reload();
            Err(refuse(
                StatusCode::CONFLICT,
                &format!(
                    "the mapping set does not reload with the new {file} (the directory changed meanwhile?); {}: {errors}",
                    if restored {
                        "the old file is back"
                    } else {
                        "the old file could NOT be put back"
                    }
                ),
            ))
        }
    }
}

/// The file's latest version in the cluster's history, unless another replica promoted it
/// and this replica's file is still the text that version replaced: this replica's
/// directory has not received it, and writing over it would undo it without a trace. (A
/// file edited by hand since, here or elsewhere, is not refused.)
async fn latest_here(console: &Console, file: &str) -> Result<Option<Version>, Refusal> {
    let latest = console
        .history
        .latest(file)
        .await
        .map_err(|e| Refusal::from(storage(e)))?;
    let Some(v) = latest else { return Ok(None) };
    let path = console.mappings.dir().join(file);
    let here = tokio::fs::read_to_string(&path).await.unwrap_or_default();
    let not_received = console.history.shared()
        && v.replica != console.history.replica()
        && here != v.after_text
        && here == v.before_text;
    if not_received {
        return Err(refuse(
            StatusCode::CONFLICT,
            &format!(
                "{file} on this replica is not version {} (promoted by {} on replica {}): this replica's mapping directory has not received it; deploy that file here first (or use the console of a replica that has it)",
                v.id, v.user, v.replica
            ),
        ));
    }
    Ok(Some(v))
}

fn golden_summary(report: &golden::GoldenReport, updated: &[String]) -> String {
    let failed = report.results.iter().filter(|r| !r.passed).count();
    let mut s = format!(
        "{} of {} golden outputs matched",
        report.results.len() - failed,
        report.results.len()
    );
    if !updated.is_empty() {
        s.push_str(&format!("; expectations accepted: {}", updated.join(", ")));
    }
    s
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromoteRequest {
    draft: Draft,
    /// Why, for the history.
    #[serde(default)]
    note: String,
    /// Golden outputs that differ become the cases' new expectations.
    #[serde(default)]
    accept_golden_changes: bool,
}

/// `POST /console/api/promote {"draft", "note"?, "acceptGoldenChanges"?}`.
pub async fn promote(
    State(console): State<Arc<Console>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<PromoteRequest>,
) -> Response {
    let _one_at_a_time = console.promotions.lock().await;
    let latest = match latest_here(&console, req.draft.file()).await {
        Ok(v) => v.map(|v| v.id),
        Err(r) => return r.into_response(),
    };
    let set = match set_for(&console, Some(&req.draft)) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let worker = console.clone();
    let draft = req.draft.clone();
    let accept = req.accept_golden_changes;
    let done = tokio::task::spawn_blocking(move || promote_blocking(&worker, set, &draft, accept))
        .await
        .unwrap_or_else(|_| {
            Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the promotion failed",
            ))
        });
    let (applied, summary) = match done {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let version = NewVersion {
        user: caller.user.name.clone(),
        action: "promote".into(),
        file: req.draft.file().to_string(),
        before_text: applied.before_text,
        after_text: req.draft.text().to_string(),
        set_before: applied.set_before.clone(),
        set_after: applied.set_after.clone(),
        note: req.note.trim().to_string(),
        golden: summary.clone(),
    };
    finish(&console, &caller, version, latest, "mapping.promote").await
}

fn promote_blocking(
    console: &Console,
    set: Arc<MappingSet>,
    draft: &Draft,
    accept: bool,
) -> Result<(Applied, String), Refusal> {
    let current =
        std::fs::read_to_string(console.mappings.dir().join(draft.file())).unwrap_or_default();
    if current == draft.text() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the draft is the live file: nothing to promote",
        ));
    }
    let tests = console.mappings.dir().join("tests");
    let report = golden::run(&set, &tests, false)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    let differing: Vec<String> = report
        .results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.name.clone())
        .collect();
    if !differing.is_empty() && !accept {
        let mut body = golden_json(&report);
        body["error"] = json!(format!(
            "{} golden output(s) differ with the draft: fix the draft, or accept the changed outputs as the cases' new expectations",
            differing.len()
        ));
        return Err((StatusCode::CONFLICT, Json(body)).into_response().into());
    }
    let applied = apply(console, draft.file(), draft.text())?;
    let mut updated = Vec::new();
    if !differing.is_empty() {
        let live = console.mappings.current();
        let rewritten = golden::run(&live, &tests, true)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
        updated = rewritten
            .results
            .into_iter()
            .filter(|r| r.updated)
            .map(|r| r.name)
            .collect();
    }
    Ok((applied, golden_summary(&report, &updated)))
}

/// Records the version and the audit entry; answers the version. When another replica
/// recorded a version of the file since `latest`, puts this replica's old file back.
async fn finish(
    console: &Arc<Console>,
    caller: &Caller,
    v: NewVersion,
    latest: Option<i64>,
    action: &str,
) -> Response {
    let target = v.file.clone();
    let detail = format!("{} -> {}; {}", v.set_before, v.set_after, v.golden);
    let answer = json!({
        "file": v.file,
        "setBefore": v.set_before,
        "setAfter": v.set_after,
        "golden": v.golden,
    });
    let (file, before_text) = (v.file.clone(), v.before_text.clone());
    match console.history.record(v, latest).await {
        Ok(Recorded::Superseded(other)) => {
            let worker = console.clone();
            let restored =
                tokio::task::spawn_blocking(move || apply(&worker, &file, &before_text).is_ok())
                    .await
                    .unwrap_or(false);
            record(
                console,
                caller,
                action,
                target,
                detail,
                "undone: another replica recorded a version meanwhile",
            )
            .await;
            refuse(
                StatusCode::CONFLICT,
                &format!(
                    "replica {} recorded version {} of this file while this promotion ran; {}",
                    other.replica,
                    other.id,
                    if restored {
                        "this replica's old file is back"
                    } else {
                        "this replica's old file could NOT be put back"
                    }
                ),
            )
            .into_response()
        }
        Ok(Recorded::Stored(id)) => {
            record(
                console,
                caller,
                action,
                target,
                format!("version {id}: {detail}"),
                "ok",
            )
            .await;
            tracing::info!(user = %caller.user.name, action, version = id, "console: mapping file changed");
            let mut answer = answer;
            answer["id"] = json!(id);
            Json(answer).into_response()
        }
        Err(e) => {
            record(
                console,
                caller,
                action,
                target,
                detail,
                "applied, not in the history",
            )
            .await;
            storage(e)
        }
    }
}

/// `GET /console/api/history`: promotions and rollbacks, newest first (no texts).
pub async fn history(State(console): State<Arc<Console>>) -> Response {
    match console.history.list(200).await {
        Ok(versions) => Json(json!({"versions": versions})).into_response(),
        Err(e) => storage(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct DiffQuery {
    /// Another version of the same file to compare with (its text after); default: this
    /// version's own text before.
    against: Option<i64>,
}

async fn version(console: &Console, id: i64) -> Result<Version, Refusal> {
    match console.history.get(id).await {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(refuse(
            StatusCode::NOT_FOUND,
            &format!("no mapping version {id}"),
        )),
        Err(e) => Err(storage(e).into()),
    }
}

/// `GET /console/api/history/{id}?against=`: one version with its line diff.
pub async fn history_entry(
    State(console): State<Arc<Console>>,
    UrlPath(id): UrlPath<i64>,
    Query(q): Query<DiffQuery>,
) -> Response {
    let v = match version(&console, id).await {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let (base, label) = match q.against {
        None => (v.before_text.clone(), "before".to_string()),
        Some(other) => match version(&console, other).await {
            Ok(o) if o.file == v.file => (o.after_text, format!("version {other}")),
            Ok(o) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "version {other} is of {}, version {id} of {}",
                        o.file, v.file
                    ),
                );
            }
            Err(r) => return r.into_response(),
        },
    };
    let mut body = serde_json::to_value(&v).unwrap_or(Value::Null);
    body["against"] = json!(label);
    body["diff"] = json!(golden::diff(&base, &v.after_text));
    Json(body).into_response()
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RollbackRequest {
    note: String,
}

/// `POST /console/api/history/{id}/rollback`: puts back the file as it was before version
/// `id` (compiled first; the golden cases are run and reported, not enforced: this is the
/// way back).
pub async fn rollback(
    State(console): State<Arc<Console>>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<i64>,
    Json(req): Json<RollbackRequest>,
) -> Response {
    let _one_at_a_time = console.promotions.lock().await;
    let v = match version(&console, id).await {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let latest = match latest_here(&console, &v.file).await {
        Ok(v) => v.map(|v| v.id),
        Err(r) => return r.into_response(),
    };
    let draft = Draft::new(v.file.clone(), v.before_text.clone());
    if let Err(r) = set_for(&console, Some(&draft)) {
        return r.into_response();
    }
    let worker = console.clone();
    let done = tokio::task::spawn_blocking(move || {
        let applied = apply(&worker, draft.file(), draft.text())?;
        let live = worker.mappings.current();
        let golden = golden::run(&live, &worker.mappings.dir().join("tests"), false)
            .map(|r| golden_summary(&r, &[]))
            .unwrap_or_else(|e| e.to_string());
        Ok::<_, Refusal>((applied, golden))
    })
    .await
    .unwrap_or_else(|_| {
        Err(refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the rollback failed",
        ))
    });
    let (applied, golden) = match done {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let note = match req.note.trim() {
        "" => format!("rollback of version {id}"),
        n => format!("rollback of version {id}: {n}"),
    };
    let version = NewVersion {
        user: caller.user.name.clone(),
        action: "rollback".into(),
        file: v.file,
        before_text: applied.before_text,
        after_text: v.before_text,
        set_before: applied.set_before,
        set_after: applied.set_after,
        note,
        golden,
    };
    finish(&console, &caller, version, latest, "mapping.rollback").await
}
