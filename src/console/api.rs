//! The console's JSON API for sessions and operations: who is signed in, the overview
//! (outbox, feed, QUBS readiness, mappings), the outbox (search, retry, purge), feed
//! retries, the live chart points and the audit log. The mapping playground's routes are in
//! [`super::playground`].
//!
//! Handlers call the library functions the CLI and gRPC call; they only shape JSON.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::auth::{self, Caller};
use super::{Console, Refusal, audit, error, refuse};
use crate::outbox::{DeadLetters, Entry, EntryFilter, RetryError, State as OutboxState};

/// Entries one outbox page holds at most.
const MAX_PAGE: usize = 500;

/// A store failure, without its detail in the answer (the log has it, and it has no PHI).
pub(crate) fn storage(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "console: the store failed");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the bridge's store failed; see the bridge's log",
    )
}

/// What the page learns about the signed-in user.
fn whoami(console: &Console, caller: &Caller) -> Value {
    json!({
        "user": caller.user.name,
        "roles": caller.user.roles().iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "domains": caller.user.domains(&console.domains),
        "csrf": caller.csrf,
        "via": caller.via,
        "idleTimeoutSecs": console.access.idle_timeout().as_secs(),
    })
}

/// Records a change in the audit log; a failure to record is logged, not hidden.
pub(crate) async fn record(
    console: &Console,
    caller: &Caller,
    action: &str,
    target: String,
    detail: String,
    outcome: &str,
) {
    let change = audit::Change {
        user: caller.user.name.clone(),
        via: caller.via.to_string(),
        action: action.to_string(),
        target,
        detail,
        outcome: outcome.to_string(),
    };
    if let Err(e) = console.audit.record(change).await {
        tracing::error!(error = %e, action, "console: could not write the audit log");
    }
}

#[derive(Deserialize)]
pub struct Login {
    token: String,
}

/// `POST /console/api/login {"token"}`: opens a session (the cookie) and returns the user
/// with the session's CSRF token.
pub async fn login(State(console): State<Arc<Console>>, Json(body): Json<Login>) -> Response {
    let Some(user) = console.access.by_token(body.token.trim()) else {
        let _ = console
            .audit
            .record(audit::Change {
                user: "(unknown)".into(),
                via: "session".into(),
                action: "login".into(),
                target: String::new(),
                detail: String::new(),
                outcome: "refused: unknown token".into(),
            })
            .await;
        return error(StatusCode::UNAUTHORIZED, "unknown token");
    };
    let session = console.access.open(user);
    let caller = Caller {
        user: session.user.clone(),
        csrf: Some(session.csrf.clone()),
        via: "session",
    };
    record(
        &console,
        &caller,
        "login",
        String::new(),
        String::new(),
        "ok",
    )
    .await;
    let mut response = Json(whoami(&console, &caller)).into_response();
    let cookie = auth::set_cookie(Some(&session.cookie), console.access.max_age());
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a token is a valid header value"),
    );
    response
}

/// `POST /console/api/logout`: closes the session.
pub async fn logout(
    State(console): State<Arc<Console>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    if let Some(cookie) = auth::session_cookie(&headers) {
        console.access.close(cookie);
    }
    record(
        &console,
        &caller,
        "logout",
        String::new(),
        String::new(),
        "ok",
    )
    .await;
    let mut response = Json(json!({"signedOut": true})).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&auth::set_cookie(None, std::time::Duration::ZERO))
            .expect("a valid header value"),
    );
    response
}

/// `GET /console/api/session`: the signed-in user, roles and CSRF token.
pub async fn session(
    State(console): State<Arc<Console>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    Json(whoami(&console, &caller)).into_response()
}

fn time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |ms| {
        jiff::Timestamp::from_millisecond(ms)
            .map(|t| Value::String(t.to_string()))
            .unwrap_or(Value::Null)
    })
}

/// Feed dead letters listed per destination in the overview.
const DEAD_LETTERS_SHOWN: usize = 20;

/// `GET /console/api/overview`: counts and states for the dashboard (no patient data).
pub async fn overview(
    State(console): State<Arc<Console>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let now = crate::store::now_ms();
    let stats = match console.outbox.stats(false).await {
        Ok(s) => s,
        Err(e) => return storage(e),
    };
    let feed = match &console.feed {
        None => json!({"enabled": false}),
        Some(feed) => {
            let statuses = match feed.destination_status().await {
                Ok(s) => s,
                Err(e) => return storage(e),
            };
            let watches = match feed.watch_status(console.feed_domains.clone()).await {
                Ok(w) => w,
                Err(e) => return storage(e),
            };
            let mut destinations = Vec::new();
            for (d, s) in console.feed_destinations.iter().zip(statuses) {
                let dead = if s.dead == 0 {
                    Vec::new()
                } else {
                    match feed.dead_letters(&d.name, DEAD_LETTERS_SHOWN).await {
                        Ok(dead) => dead,
                        Err(e) => return storage(e),
                    }
                };
                destinations.push(json!({
                    "name": d.name,
                    "kind": d.kind.as_str(),
                    "target": d.target(),
                    "pending": s.pending,
                    "delivered": s.delivered,
                    "dead": s.dead,
                    "oldestPendingSecs": s.oldest_pending_at_ms.map(|t| (now - t).max(0) / 1000),
                    "lastAckCode": s.last_ack_code,
                    "lastAckAt": time(s.last_ack_at_ms),
                    "lastError": s.last_error,
                    "lastErrorAt": time(s.last_error_at_ms),
                    "deadLetters": dead
                        .into_iter()
                        .filter(|x| caller.user.may_see(&x.domain))
                        .map(|x| json!({
                            "domain": x.domain,
                            "appointmentId": x.appointment_id,
                            "kind": x.kind.as_str(),
                            "controlId": x.control_id,
                            "attempts": x.attempts,
                            "ackCode": x.ack_code,
                            "lastError": x.last_error,
                            "at": time(Some(x.updated_at_ms)),
                        }))
                        .collect::<Vec<_>>(),
                }));
            }
            json!({
                "enabled": true,
                "destinations": destinations,
                "watches": watches.into_iter().map(|w| json!({
                    "domain": w.domain,
                    "baselined": w.baselined,
                    "polls": w.polls,
                    "lastPollAt": time(w.last_poll_at_ms),
                    "lastError": w.last_error,
                    "trackedOrders": w.tracked_orders,
                })).collect::<Vec<_>>(),
            })
        }
    };
    let set = console.mappings.current();
    Json(json!({
        "outbox": {
            "pending": stats.pending,
            "dead": stats.dead,
            "oldestPendingSecs": stats.oldest_pending_age_secs(now).round(),
        },
        "feed": feed,
        "qubs": {
            "ready": console.readiness.is_ready(&console.domains),
            "domains": console.readiness.snapshot(),
        },
        "mappings": {
            "version": set.version(),
            "names": set.names().collect::<Vec<_>>(),
            "loaded": console.mappings.is_loaded(),
            "reloadError": console.mappings.failing(),
        },
    }))
    .into_response()
}

/// `GET /console/api/live`: the last hour's chart points, oldest first.
pub async fn live(State(console): State<Arc<Console>>) -> Response {
    Json(json!({
        "intervalSecs": super::samples::INTERVAL.as_secs(),
        "points": console.samples.points(),
    }))
    .into_response()
}

/// An outbox entry as the console shows it: ids, states and reasons (no report content).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntryView {
    id: i64,
    domain: String,
    appointment_id: String,
    source: &'static str,
    /// An ORU's MSH-10, a DiagnosticReport's id.
    source_id: String,
    group: u32,
    report_status: String,
    state: &'static str,
    attempts: u32,
    received_at: Value,
    next_attempt_at: Value,
    updated_at: Value,
    last_error: Option<String>,
    error_kind: Option<String>,
    qubs_request_id: Option<String>,
    report_guid: Option<String>,
    attachments: u32,
}

fn view(e: Entry) -> EntryView {
    EntryView {
        id: e.id,
        domain: e.domain,
        appointment_id: e.appointment_id,
        source: e.source.as_str(),
        source_id: e.source_id,
        group: e.group,
        report_status: e.report_status,
        state: e.state.as_str(),
        attempts: e.attempts,
        received_at: time(Some(e.received_at_ms)),
        next_attempt_at: match e.state {
            OutboxState::Pending => time(Some(e.next_attempt_at_ms)),
            _ => Value::Null,
        },
        updated_at: time(Some(e.updated_at_ms)),
        last_error: e.last_error,
        error_kind: e.error_kind,
        qubs_request_id: e.qubs_request_id,
        report_guid: e.receipt.map(|r| r.report_guid),
        attachments: e.attachments,
    }
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboxQuery {
    /// `pending`, `submitted` or `dead`; all when absent.
    state: Option<String>,
    /// An appointment id (an ORU's placer, filler or accession number, as mapped) or an
    /// input's id (MSH-10, DiagnosticReport id).
    q: Option<String>,
    /// Entries older than this id (the next page).
    before: Option<i64>,
    limit: Option<usize>,
}

fn parse_state(s: &str) -> Result<OutboxState, Refusal> {
    match s {
        "pending" => Ok(OutboxState::Pending),
        "submitted" => Ok(OutboxState::Submitted),
        "dead" => Ok(OutboxState::Dead),
        other => Err(refuse(
            StatusCode::BAD_REQUEST,
            &format!("state `{other}` is not one of pending, submitted, dead"),
        )),
    }
}

/// `GET /console/api/outbox?state=&q=&before=&limit=`: the newest entries first.
pub async fn outbox_list(
    State(console): State<Arc<Console>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<OutboxQuery>,
) -> Response {
    let state = match query.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match parse_state(s) {
            Ok(s) => Some(s),
            Err(r) => return r.into_response(),
        },
    };
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let filter = EntryFilter {
        state,
        domains: caller.user.domains(&console.domains),
        before_id: query.before,
        newest_first: true,
        limit,
        ..Default::default()
    };
    let entries = match query.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        None => console.outbox.list(filter).await,
        Some(q) => {
            // The same text may be an appointment id or a message id: ask for both.
            let by_appointment = EntryFilter {
                appointment_id: Some(q.to_string()),
                ..filter.clone()
            };
            let by_message = EntryFilter {
                source_id: Some(q.to_string()),
                ..filter
            };
            match (
                console.outbox.list(by_appointment).await,
                console.outbox.list(by_message).await,
            ) {
                (Ok(mut a), Ok(b)) => {
                    a.extend(b);
                    a.sort_by_key(|e| std::cmp::Reverse(e.id));
                    a.dedup_by_key(|e| e.id);
                    a.truncate(limit);
                    Ok(a)
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
    };
    match entries {
        Ok(entries) => {
            let next = (entries.len() == limit).then(|| entries.last().map(|e| e.id));
            Json(json!({
                "entries": entries.into_iter().map(view).collect::<Vec<_>>(),
                "before": next.flatten(),
            }))
            .into_response()
        }
        Err(e) => storage(e),
    }
}

/// `GET /console/api/outbox/{id}`: one entry.
pub async fn outbox_entry(
    State(console): State<Arc<Console>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> Response {
    match console.outbox.entry(id).await {
        Ok(Some(e)) if caller.user.may_see(&e.domain) => Json(view(e)).into_response(),
        Ok(_) => error(StatusCode::NOT_FOUND, &format!("no outbox entry {id}")),
        Err(e) => storage(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryRequest {
    #[serde(default)]
    ids: Vec<i64>,
    /// Every dead letter the user's domains have.
    #[serde(default)]
    all_dead: bool,
}

/// `POST /console/api/outbox/retry {"ids": [..]} | {"allDead": true}`: dead letters back
/// in the queue, through [`crate::outbox::Outbox::retry`]; audited.
pub async fn outbox_retry(
    State(console): State<Arc<Console>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<RetryRequest>,
) -> Response {
    let (which, target) = match (req.all_dead, req.ids.is_empty()) {
        (true, true) => (DeadLetters::All, "all dead letters".to_string()),
        (false, false) => (
            DeadLetters::Ids(req.ids.clone()),
            format!(
                "outbox {}",
                req.ids
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give entry ids, or allDead: true (not both)",
            );
        }
    };
    let domains = caller.user.domains(&console.domains);
    match console.outbox.retry(which, &domains).await {
        Ok(requeued) => {
            let detail = format!("requeued {requeued}");
            record(&console, &caller, "outbox.retry", target, detail, "ok").await;
            tracing::info!(user = %caller.user.name, requeued, "console: dead letters requeued");
            Json(json!({"requeued": requeued})).into_response()
        }
        Err(RetryError::OtherDomain { id, .. }) => {
            let why = format!("refused: entry {id} is outside the user's domains");
            record(
                &console,
                &caller,
                "outbox.retry",
                target,
                String::new(),
                &why,
            )
            .await;
            error(
                StatusCode::FORBIDDEN,
                &format!("outbox entry {id} belongs to a domain you may not use"),
            )
        }
        Err(RetryError::Storage(e)) => storage(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PurgeRequest {
    /// `submitted` or `dead` (pending results are never purged).
    state: String,
    /// Entries last changed longer ago than this.
    older_than_hours: u64,
}

/// `POST /console/api/outbox/purge {"state", "olderThanHours"}`: deletes settled results,
/// through [`crate::outbox::Outbox::purge`]; audited.
pub async fn outbox_purge(
    State(console): State<Arc<Console>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<PurgeRequest>,
) -> Response {
    let state = match parse_state(&req.state) {
        Ok(OutboxState::Pending) => {
            return error(
                StatusCode::BAD_REQUEST,
                "pending results are never purged; purge `submitted` or `dead`",
            );
        }
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    // The age is measured by the store's clock (the database's on PostgreSQL).
    let older_than = std::time::Duration::from_secs(req.older_than_hours.min(100_000) * 3600);
    let domains = caller.user.domains(&console.domains);
    match console.outbox.purge(state, older_than, domains).await {
        Ok(purged) => {
            record(
                &console,
                &caller,
                "outbox.purge",
                format!("{} older than {} h", state.as_str(), req.older_than_hours),
                format!("purged {purged}"),
                "ok",
            )
            .await;
            tracing::info!(user = %caller.user.name, purged, "console: outbox purged");
            Json(json!({"purged": purged})).into_response()
        }
        Err(e) => storage(e),
    }
}

/// `POST /console/api/feed/{destination}/retry`: a destination's dead letters back in its
/// queue, through [`crate::feed::Feed::requeue`]; audited.
pub async fn feed_retry(
    State(console): State<Arc<Console>>,
    Extension(caller): Extension<Caller>,
    Path(destination): Path<String>,
) -> Response {
    let Some(feed) = &console.feed else {
        return error(
            StatusCode::CONFLICT,
            "the order feed is not enabled on this bridge (feed.enabled = false)",
        );
    };
    if !console
        .feed_destinations
        .iter()
        .any(|d| d.name == destination)
    {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no feed destination named `{destination}`"),
        );
    }
    let domains = caller.user.domains(&console.domains);
    match feed.requeue(&destination, domains).await {
        Ok(requeued) => {
            record(
                &console,
                &caller,
                "feed.retry",
                format!("destination {destination}"),
                format!("requeued {requeued}"),
                "ok",
            )
            .await;
            Json(json!({"requeued": requeued})).into_response()
        }
        Err(e) => storage(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineQuery {
    domain: String,
    id: String,
}

/// `GET /console/api/timeline?domain=&id=`: everything the bridge did for one appointment,
/// newest first — each feed event (mapping version, MSH-10) with every destination's
/// delivery (attempts, ACK, error), and each result received for it (its MSH-10, the
/// outbox state and attempts, QUBS's answer or the reason it stopped). Ids, states and
/// reasons only.
pub async fn timeline(
    State(console): State<Arc<Console>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<TimelineQuery>,
) -> Response {
    let id = q.id.trim().to_string();
    if id.is_empty() {
        return error(StatusCode::BAD_REQUEST, "give an appointment id");
    }
    if !console.domains.contains(&q.domain) || !caller.user.may_see(&q.domain) {
        return error(
            StatusCode::FORBIDDEN,
            &format!("domain `{}` is not one of yours", q.domain),
        );
    }
    let results = console
        .outbox
        .list(EntryFilter {
            domains: vec![q.domain.clone()],
            appointment_id: Some(id.clone()),
            newest_first: true,
            limit: MAX_PAGE,
            ..Default::default()
        })
        .await;
    let results = match results {
        Ok(r) => r,
        Err(e) => return storage(e),
    };
    let events = match &console.feed {
        None => Vec::new(),
        Some(feed) => match feed.order_history(&q.domain, &id, MAX_PAGE).await {
            Ok(e) => e,
            Err(e) => return storage(e),
        },
    };
    let mut steps: Vec<(i64, Value)> = Vec::new();
    for e in events {
        let ok = !e.deliveries.is_empty() && e.deliveries.iter().all(|d| d.state == "delivered");
        steps.push((
            e.created_at_ms,
            json!({
                "at": time(Some(e.created_at_ms)),
                "step": "order sent",
                "what": format!("{} order mapped with {}; ORM^O01 MSH-10 {}", e.kind.as_str(), e.mapping_version, e.control_id),
                "ok": ok,
                "deliveries": e.deliveries.into_iter().map(|d| json!({
                    "destination": d.destination,
                    "state": d.state,
                    "attempts": d.attempts,
                    "ackCode": d.ack_code,
                    "lastError": d.last_error,
                    "at": time(Some(d.updated_at_ms)),
                })).collect::<Vec<_>>(),
            }),
        ));
    }
    for r in results {
        let at = r.received_at_ms;
        let entry = view(r);
        steps.push((
            at,
            json!({
                "at": entry.received_at,
                "step": "result received",
                "what": format!(
                    "{} {} {} ({}); outbox entry {}: {} after {} attempt(s)",
                    entry.source, entry.source_id, entry.report_status,
                    entry.domain, entry.id, entry.state, entry.attempts
                ),
                "ok": entry.state == "submitted",
                "result": entry,
            }),
        ));
    }
    steps.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    Json(json!({
        "domain": q.domain,
        "appointmentId": id,
        "feedEnabled": console.feed.is_some(),
        "steps": steps.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    }))
    .into_response()
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuditQuery {
    before: i64,
    limit: Option<usize>,
}

/// `GET /console/api/audit?before=&limit=`: the newest changes first.
pub async fn audit(
    State(console): State<Arc<Console>>,
    Query(query): Query<AuditQuery>,
) -> Response {
    match console
        .audit
        .list(query.before, query.limit.unwrap_or(50).clamp(1, MAX_PAGE))
        .await
    {
        Ok(entries) => Json(json!({"entries": entries})).into_response(),
        Err(e) => storage(e),
    }
}
