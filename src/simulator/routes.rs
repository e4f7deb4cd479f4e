//! HTTP surface of the simulator: QUBS endpoints, token endpoint, presigned URLs, and the
//! `/_simulator` control endpoints (request log, faults, submissions, appointments, tokens)
//! for tests, demos and load drivers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::faults::{Fault, FaultRule, take_fault};
use super::state::{MAX_UPLOAD_BYTES, SimProblem, problem};
use super::tokens::{AccessClaims, ISSUER, PresignClaims};
use super::{ClientAuth, RequestRecord, SimState};

type Shared = Arc<SimState>;

/// Set on responses a fault shaped, for the request log.
#[derive(Clone)]
struct FaultApplied(&'static str);

/// How long a report POST takes to process ([`Fault::SlowProcessing`]).
#[derive(Clone, Copy)]
struct ProcessingTime(u64);

/// In strict mode, an endpoint QUBS's documentation does not describe is not there.
fn documented_only(state: &SimState) -> Result<(), SimProblem> {
    if state.strict.load(Ordering::Relaxed) {
        Err(problem(
            404,
            "no such endpoint (strict mode serves only what QUBS documents)",
        ))
    } else {
        Ok(())
    }
}

/// A problem a handler raised; [`observe`] renders it with the correlation id and path.
#[derive(Clone)]
struct PendingProblem(SimProblem);

impl IntoResponse for SimProblem {
    fn into_response(self) -> Response {
        let mut response = StatusCode::from_u16(self.status)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response();
        response.extensions_mut().insert(PendingProblem(self));
        response
    }
}

pub(crate) fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/{domain}/reporting/appointments/pending", get(pending))
        .route("/{domain}/reporting/appointments/{id}", get(appointment))
        .route(
            "/{domain}/reporting/appointments/{id}/attachments",
            get(attachments),
        )
        .route(
            "/{domain}/reporting/appointments/{id}/attachments/{guid}",
            get(attachment),
        )
        .route(
            "/{domain}/reporting/appointments/{id}/comments",
            get(comments),
        )
        .route(
            "/{domain}/reporting/appointments/{id}/comments/{guid}",
            get(comment),
        )
        .route(
            "/{domain}/reporting/appointments/{id}/report",
            post(submit_report),
        )
        .route(
            "/{domain}/reporting/appointments/{id}/report/attachments",
            post(register_report_attachments),
        )
        .route("/{domain}/sites", get(sites))
        .route("/{domain}/sites/{site}", get(site))
        .layer(middleware::from_fn_with_state(state.clone(), authorize));
    let control = Router::new()
        .route(
            "/requests",
            get(control_requests).delete(control_clear_requests),
        )
        .route(
            "/faults",
            post(control_add_fault).delete(control_clear_faults),
        )
        .route("/submissions/{domain}", get(control_submissions))
        .route("/appointments/{domain}", put(control_put_appointment))
        .route("/token-lifetime", put(control_token_lifetime))
        .route("/rotate-signing-key", post(control_rotate_signing_key));
    Router::new()
        .nest("/integrations/v1", api)
        .route("/oauth2/token", post(token))
        .route("/_files/{token}", get(download))
        .route("/_uploads/{token}", put(upload))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), inject_faults))
        .nest("/_simulator", control)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        // Report text may be 2 MiB of JSON-escaped characters: leave room above it.
        .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
        .with_state(state)
}

// ---- middleware ---------------------------------------------------------------------------

/// Outermost: correlation id in and out, problems rendered, every request logged.
async fn observe(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let correlation_id = request
        .headers()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().map(str::to_string);
    let idempotency_key = request
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Logged on arrival with status 0, completed below: a request whose client went away
    // (a timeout) stays in the log with status 0.
    let logged = (!path.starts_with("/_simulator")).then(|| {
        let mut log = state.log.lock().expect("request log");
        let seq = state.seq.fetch_add(1, Ordering::Relaxed) + 1;
        log.push(RequestRecord {
            seq,
            method: method.clone(),
            path: path.clone(),
            query,
            correlation_id: correlation_id.clone(),
            idempotency_key,
            status: 0,
            fault: None,
        });
        seq
    });
    let mut response = next.run(request).await;
    if let Some(PendingProblem(p)) = response.extensions_mut().remove::<PendingProblem>() {
        let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
        // An injected 429/5xx is a problem too: keep its fault on record.
        let fault = response.extensions_mut().remove::<FaultApplied>();
        response = problem_response(&p, &correlation_id, &path);
        if let Some(v) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if let Some(f) = fault {
            response.extensions_mut().insert(f);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&correlation_id) {
        response.headers_mut().insert("x-correlation-id", v);
    }
    let status = response.status().as_u16();
    let fault = response
        .extensions()
        .get::<FaultApplied>()
        .map(|f| f.0.to_string());
    // Presigned paths carry a credential: log the route, not the token.
    let shown = match path
        .split_once("/_files/")
        .or_else(|| path.split_once("/_uploads/"))
    {
        Some(_) => path
            .rsplit_once('/')
            .map(|(route, _)| format!("{route}/…"))
            .unwrap_or_default(),
        None => path.clone(),
    };
    tracing::debug!(%method, path = %shown, status, correlation_id, fault = fault.as_deref(), "simulator request");
    if let Some(seq) = logged {
        let mut log = state.log.lock().expect("request log");
        if let Ok(i) = log.binary_search_by_key(&seq, |r| r.seq) {
            log[i].status = status;
            log[i].fault = fault;
        }
    }
    response
}

fn problem_response(p: &SimProblem, correlation_id: &str, instance: &str) -> Response {
    let (kind, title) = match p.status {
        400 => ("bad-request", "Bad Request"),
        401 => ("unauthorized", "Unauthorized"),
        403 => ("forbidden", "Forbidden"),
        404 => ("not-found", "Not Found"),
        409 => ("conflict", "Conflict"),
        413 => ("bad-request", "Payload Too Large"),
        429 => ("too-many-requests", "Too Many Requests"),
        _ => ("server-error", "Server Error"),
    };
    let body = json!({
        "type": format!("urn:qubs:integrations:{kind}"),
        "title": title,
        "status": p.status,
        "detail": p.detail,
        "instance": instance,
        "requestId": correlation_id,
    });
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// Applies the first matching fault rule.
async fn inject_faults(State(state): State<Shared>, mut request: Request, next: Next) -> Response {
    let fault = {
        let mut rules = state.faults.lock().expect("faults");
        take_fault(&mut rules, request.method().as_str(), request.uri().path())
    };
    let Some(fault) = fault else {
        return next.run(request).await;
    };
    let name = fault.name();
    let mut response = match fault {
        Fault::Latency { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            next.run(request).await
        }
        Fault::SlowProcessing { ms } => {
            if request.method() == Method::POST && request.uri().path().ends_with("/report") {
                request.extensions_mut().insert(ProcessingTime(ms));
            } else {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            next.run(request).await
        }
        Fault::Status {
            status,
            retry_after,
        } => {
            let mut r = problem(status, "fault injected by the simulator").into_response();
            if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        Fault::DropConnection => dropped(StatusCode::OK, HeaderMap::new()),
        Fault::DropAfterProcessing => {
            let r = next.run(request).await;
            dropped(r.status(), r.headers().clone())
        }
        Fault::MalformedJson => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"items": [{"appointmentId": "A1", "status": "PEND"#,
        )
            .into_response(),
        Fault::Raw {
            status,
            content_type,
            body,
        } => {
            let mut r = Response::new(Body::from(body));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Ok(v) = HeaderValue::from_str(&content_type) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r
        }
        Fault::SlowBody {
            chunk_bytes,
            delay_ms,
        } => {
            let r = next.run(request).await;
            let (parts, body) = r.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            let chunk = chunk_bytes.max(1);
            let chunks: Vec<Bytes> = bytes.chunks(chunk).map(Bytes::copy_from_slice).collect();
            let stream = futures::stream::iter(chunks).then(move |c| async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                Ok::<_, std::io::Error>(c)
            });
            Response::from_parts(parts, Body::from_stream(stream))
        }
    };
    response.extensions_mut().insert(FaultApplied(name));
    response
}

/// A response whose body fails at once: the client sees the connection drop.
fn dropped(status: StatusCode, headers: HeaderMap) -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, _>(std::io::Error::other(
            "connection dropped by fault injection",
        ))
    });
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r.headers_mut().remove(header::CONTENT_LENGTH);
    r
}

/// Bearer token check for the API: 401 without a valid token, 403 outside its domains.
async fn authorize(State(state): State<Shared>, mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let Some(token) = token else {
        return problem(401, "missing bearer token").into_response();
    };
    let claims: AccessClaims = match state.access_key.read().expect("key").verify(token) {
        Ok(c) => c,
        Err(reason) => return problem(401, reason).into_response(),
    };
    // Nested routers see the path without the `/integrations/v1` prefix.
    let path = request.uri().path();
    let path = path.strip_prefix("/integrations/v1").unwrap_or(path);
    let segment = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    let domain = percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned();
    if !claims.domains.iter().any(|d| d == &domain) {
        return problem(403, format!("the token is not valid for domain {domain}")).into_response();
    }
    request.extensions_mut().insert(claims);
    next.run(request).await
}

// ---- OAuth2 -------------------------------------------------------------------------------

async fn token(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    state.token_requests.fetch_add(1, Ordering::Relaxed);
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let oauth_error = |status: StatusCode, error: &str, description: &str| {
        (
            status,
            axum::Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    let rules = state.token_rules.read().expect("token rules").clone();
    for (name, wanted) in [("scope", &rules.scope), ("audience", &rules.audience)] {
        if let Some(wanted) = wanted
            && form.get(name) != Some(wanted)
        {
            let error = if name == "scope" {
                "invalid_scope"
            } else {
                "invalid_request"
            };
            return oauth_error(
                StatusCode::BAD_REQUEST,
                error,
                &format!("{name} must be `{wanted}`"),
            );
        }
    }
    // Credentials in the form body, or HTTP Basic (RFC 6749 §2.3.1: form-encoded parts).
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            let (id, secret) = s.split_once(':')?;
            let decode = |p: &str| {
                percent_encoding::percent_decode_str(&p.replace('+', " "))
                    .decode_utf8()
                    .ok()
                    .map(|c| c.into_owned())
            };
            Some((decode(id)?, decode(secret)?))
        });
    let in_body = match (form.get("client_id"), form.get("client_secret")) {
        (Some(id), Some(secret)) => Some((id.clone(), secret.clone())),
        _ => None,
    };
    let wrong_way = match rules.client_auth {
        ClientAuth::Either => None,
        ClientAuth::Basic if in_body.is_some() => {
            Some("client credentials must come as HTTP Basic, not in the body")
        }
        ClientAuth::Post if basic.is_some() => {
            Some("client credentials must come in the form body, not as HTTP Basic")
        }
        _ => None,
    };
    if let Some(reason) = wrong_way {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", reason);
    }
    let (id, secret) = match (in_body, basic) {
        (Some(pair), _) | (None, Some(pair)) => pair,
        _ => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client credentials are missing",
            );
        }
    };
    let client = state
        .clients
        .read()
        .expect("clients")
        .iter()
        .find(|c| c.client_id == id && c.client_secret == secret)
        .cloned();
    let Some(client) = client else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        );
    };
    let lifetime = *state.token_lifetime.read().expect("lifetime");
    let now = jiff::Timestamp::now().as_second();
    let claims = AccessClaims {
        sub: client.client_id,
        domains: client.domains,
        iat: now,
        exp: now + lifetime.as_secs() as i64,
        iss: ISSUER.into(),
        jti: uuid::Uuid::new_v4().to_string(),
    };
    let token = state.access_key.read().expect("key").sign(&claims);
    let mut answer = json!({"access_token": token, "token_type": "Bearer"});
    if !state.strict.load(Ordering::Relaxed) {
        answer["expires_in"] = json!(lifetime.as_secs());
    }
    axum::Json(answer).into_response()
}

// ---- appointments -------------------------------------------------------------------------

#[derive(Deserialize)]
struct PendingQuery {
    #[serde(rename = "pageSize")]
    page_size: Option<String>,
    #[serde(rename = "nextToken")]
    next_token: Option<String>,
}

const CURSOR_PREFIX: &str = "c1:";
/// Strict mode's cursors: `c2:<page of the pass>:<key read last>`.
const STRICT_CURSOR_PREFIX: &str = "c2:";

async fn pending(
    State(state): State<Shared>,
    Path(domain): Path<String>,
    Query(q): Query<PendingQuery>,
) -> Result<Response, SimProblem> {
    let size = match q.page_size.as_deref() {
        None => 100,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => return Err(problem(400, "pageSize must be an integer from 1 to 500")),
        },
    };
    let cursor = match q.next_token.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => Some(
            URL_SAFE_NO_PAD
                .decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| problem(400, "nextToken is not valid"))?,
        ),
    };
    let invalid = || problem(400, "nextToken is not valid");
    if state.strict.load(Ordering::Relaxed) {
        // `c2:<page>:` then the key, empty before the first one.
        let (page, after) = match &cursor {
            None => (0, None),
            Some(c) => {
                let rest = c.strip_prefix(STRICT_CURSOR_PREFIX).ok_or_else(invalid)?;
                let (page, key) = rest.split_once(':').ok_or_else(invalid)?;
                let page: u32 = page.parse().map_err(|_| invalid())?;
                (page, (!key.is_empty()).then(|| key.to_string()))
            }
        };
        let (items, next) = with_existing_domain(&state, &domain, |d| {
            Ok(d.strict_pending_page(after.as_deref(), page, size))
        })?;
        let next = next.map(|key| {
            URL_SAFE_NO_PAD.encode(format!(
                "{STRICT_CURSOR_PREFIX}{}:{}",
                page + 1,
                key.unwrap_or_default()
            ))
        });
        return Ok(axum::Json(json!({"items": items, "nextToken": next})).into_response());
    }
    let after = match cursor {
        None => None,
        Some(c) => Some(
            c.strip_prefix(CURSOR_PREFIX)
                .map(str::to_string)
                .ok_or_else(invalid)?,
        ),
    };
    let (items, last) = with_existing_domain(&state, &domain, |d| {
        Ok(d.pending_page(after.as_deref(), size))
    })?;
    let next = last.map(|id| URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{id}")));
    Ok(axum::Json(json!({"items": items, "nextToken": next})).into_response())
}

async fn appointment(
    State(state): State<Shared>,
    Path((domain, id)): Path<(String, String)>,
) -> Result<Response, SimProblem> {
    documented_only(&state)?;
    with_existing_domain(&state, &domain, |d| {
        d.appointments
            .get(&id)
            .cloned()
            .map(|a| axum::Json(a).into_response())
            .ok_or_else(|| problem(404, format!("appointment {id} was not found")))
    })
}

// ---- attachments --------------------------------------------------------------------------

#[derive(Deserialize)]
struct AttachmentQuery {
    #[serde(rename = "urlTtlSeconds")]
    url_ttl_seconds: Option<String>,
    disposition: Option<String>,
}

impl AttachmentQuery {
    fn read(&self) -> Result<(i64, String), SimProblem> {
        let ttl = match self.url_ttl_seconds.as_deref() {
            None => 900,
            Some(s) => match s.parse::<i64>() {
                Ok(n) if (1..=86_400).contains(&n) => n,
                _ => {
                    return Err(problem(
                        400,
                        "urlTtlSeconds must be an integer from 1 to 86400",
                    ));
                }
            },
        };
        let disposition = match self.disposition.as_deref() {
            None | Some("inline") => "inline",
            Some("attachment") => "attachment",
            Some(_) => return Err(problem(400, "disposition must be inline or attachment")),
        };
        Ok((ttl, disposition.to_string()))
    }
}

fn presigned_meta(
    state: &SimState,
    domain: &str,
    appointment_id: &str,
    record: &super::AttachmentRecord,
    ttl: i64,
    disposition: &str,
) -> Value {
    let mut meta = record.meta.clone();
    let guid = meta
        .get("guid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let exp = jiff::Timestamp::now().as_second() + ttl;
    let token = state.presign_key.sign(&PresignClaims {
        op: "get".into(),
        domain: domain.into(),
        appointment_id: appointment_id.into(),
        guid,
        disposition: Some(disposition.into()),
        exp,
    });
    let origin = state.origin.read().expect("origin").clone();
    meta.insert("url".into(), json!(format!("{origin}/_files/{token}")));
    meta.insert(
        "urlExpiresAtUtc".into(),
        json!(
            jiff::Timestamp::from_second(exp)
                .map(|t| t.to_string())
                .unwrap_or_default()
        ),
    );
    Value::Object(meta)
}

async fn attachments(
    State(state): State<Shared>,
    Path((domain, id)): Path<(String, String)>,
    Query(q): Query<AttachmentQuery>,
) -> Result<Response, SimProblem> {
    let (ttl, disposition) = q.read()?;
    let list = with_appointment(&state, &domain, &id, |d| {
        Ok(d.attachments.get(&id).cloned().unwrap_or_default())
    })?;
    let items: Vec<Value> = list
        .iter()
        .map(|r| presigned_meta(&state, &domain, &id, r, ttl, &disposition))
        .collect();
    Ok(axum::Json(items).into_response())
}

async fn attachment(
    State(state): State<Shared>,
    Path((domain, id, guid)): Path<(String, String, String)>,
    Query(q): Query<AttachmentQuery>,
) -> Result<Response, SimProblem> {
    let (ttl, disposition) = q.read()?;
    let record = with_appointment(&state, &domain, &id, |d| {
        d.attachments
            .get(&id)
            .and_then(|l| {
                l.iter()
                    .find(|r| r.meta.get("guid").and_then(Value::as_str) == Some(&guid))
            })
            .cloned()
            .ok_or_else(|| problem(404, format!("attachment {guid} was not found")))
    })?;
    Ok(axum::Json(presigned_meta(
        &state,
        &domain,
        &id,
        &record,
        ttl,
        &disposition,
    ))
    .into_response())
}

async fn download(
    State(state): State<Shared>,
    Path(token): Path<String>,
) -> Result<Response, SimProblem> {
    let claims: PresignClaims = state
        .presign_key
        .verify(&token)
        .map_err(|reason| problem(403, format!("presigned URL refused: {reason}")))?;
    if claims.op != "get" {
        return Err(problem(403, "presigned URL refused: not a download URL"));
    }
    let record = with_appointment(&state, &claims.domain, &claims.appointment_id, |d| {
        d.attachments
            .get(&claims.appointment_id)
            .and_then(|l| {
                l.iter()
                    .find(|r| r.meta.get("guid").and_then(Value::as_str) == Some(&claims.guid))
            })
            .cloned()
            .ok_or_else(|| problem(404, "attachment was not found"))
    })?;
    let file_name = record
        .meta
        .get("fileName")
        .and_then(Value::as_str)
        .unwrap_or("attachment")
        .replace('"', "");
    let disposition = format!(
        "{}; filename=\"{file_name}\"",
        claims.disposition.as_deref().unwrap_or("inline")
    );
    // Served in 64 KiB chunks, like an object store would.
    let content = record.content.clone();
    let len = content.len();
    let chunks = (0..len.div_ceil(65_536)).map(move |i| {
        Ok::<_, std::io::Error>(content.slice(i * 65_536..((i + 1) * 65_536).min(len)))
    });
    let mut response = Response::new(Body::from_stream(futures::stream::iter(chunks)));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&record.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

// ---- comments -----------------------------------------------------------------------------

async fn comments(
    State(state): State<Shared>,
    Path((domain, id)): Path<(String, String)>,
) -> Result<Response, SimProblem> {
    with_appointment(&state, &domain, &id, |d| {
        Ok(axum::Json(d.comments.get(&id).cloned().unwrap_or_default()).into_response())
    })
}

async fn comment(
    State(state): State<Shared>,
    Path((domain, id, guid)): Path<(String, String, String)>,
) -> Result<Response, SimProblem> {
    with_appointment(&state, &domain, &id, |d| {
        d.comments
            .get(&id)
            .and_then(|l| {
                l.iter()
                    .find(|c| c.get("guid").and_then(Value::as_str) == Some(&guid))
            })
            .cloned()
            .map(|c| axum::Json(c).into_response())
            .ok_or_else(|| problem(404, format!("comment {guid} was not found")))
    })
}

// ---- reports ------------------------------------------------------------------------------

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, SimProblem> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .filter(|k| {
                    !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic())
                })
                .ok_or_else(|| {
                    problem(
                        400,
                        "Idempotency-Key must be 1 to 128 printable ASCII characters",
                    )
                })?;
            Ok(Some(key.to_string()))
        }
    }
}

fn created(outcome: super::state::PostOutcome) -> Response {
    let mut r = (
        StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::CREATED),
        axum::Json(outcome.body),
    )
        .into_response();
    if outcome.replayed {
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}

async fn submit_report(
    State(state): State<Shared>,
    Path((domain, id)): Path<(String, String)>,
    processing: Option<Extension<ProcessingTime>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SimProblem> {
    let key = idempotency_key(&headers)?;
    let retention = *state.idempotency_retention.read().expect("retention");
    if let (Some(Extension(ProcessingTime(ms))), Some(key)) = (processing, key.clone()) {
        // A slow submission: its key is in progress until it is stored. Like a real server
        // it finishes even when the client stops waiting (its own task).
        with_existing_domain(&state, &domain, |d| d.begin_processing(&key))?;
        let processing = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            with_existing_domain(&state, &domain, |d| {
                d.end_processing(&key);
                d.submit_report(&id, Some(&key), &body, retention, jiff::Timestamp::now())
                    .map(created)
            })
        });
        return processing
            .await
            .unwrap_or_else(|_| Err(problem(500, "the submission failed")));
    }
    with_existing_domain(&state, &domain, |d| {
        if let Some(key) = key.as_deref() {
            d.begin_processing(key)?;
            d.end_processing(key);
        }
        d.submit_report(
            &id,
            key.as_deref(),
            &body,
            retention,
            jiff::Timestamp::now(),
        )
        .map(created)
    })
}

async fn register_report_attachments(
    State(state): State<Shared>,
    Path((domain, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SimProblem> {
    documented_only(&state)?;
    let key = idempotency_key(&headers)?;
    // Report-attachment keys are kept 15 minutes.
    let retention = Duration::from_secs(15 * 60);
    let origin = state.origin.read().expect("origin").clone();
    let exp = jiff::Timestamp::now().as_second() + 15 * 60;
    let upload_url = |guid: &str| {
        let token = state.presign_key.sign(&PresignClaims {
            op: "put".into(),
            domain: domain.clone(),
            appointment_id: id.clone(),
            guid: guid.into(),
            disposition: None,
            exp,
        });
        (
            format!("{origin}/_uploads/{token}"),
            jiff::Timestamp::from_second(exp)
                .map(|t| t.to_string())
                .unwrap_or_default(),
        )
    };
    with_existing_domain(&state, &domain, |d| {
        d.register_report_attachments(&id, key.as_deref(), &body, retention, upload_url)
            .map(created)
    })
}

async fn upload(
    State(state): State<Shared>,
    Path(token): Path<String>,
    body: Bytes,
) -> Result<Response, SimProblem> {
    documented_only(&state)?;
    let claims: PresignClaims = state
        .presign_key
        .verify(&token)
        .map_err(|reason| problem(403, format!("presigned URL refused: {reason}")))?;
    if claims.op != "put" {
        return Err(problem(403, "presigned URL refused: not an upload URL"));
    }
    if body.len() > MAX_UPLOAD_BYTES {
        return Err(problem(
            413,
            format!(
                "upload is {} bytes; at most {MAX_UPLOAD_BYTES} per PUT",
                body.len()
            ),
        ));
    }
    with_existing_domain(&state, &claims.domain, |d| {
        let record = d
            .report_attachments
            .get_mut(&claims.guid)
            .ok_or_else(|| problem(404, "report attachment was not registered"))?;
        record.content = Some(body.clone());
        Ok(StatusCode::OK.into_response())
    })
}

// ---- sites --------------------------------------------------------------------------------

async fn sites(
    State(state): State<Shared>,
    Path(domain): Path<String>,
) -> Result<Response, SimProblem> {
    documented_only(&state)?;
    with_existing_domain(&state, &domain, |d| {
        let list: Vec<Value> = d
            .sites
            .iter()
            .map(|s| json!({"domain": domain, "siteName": s.name}))
            .collect();
        Ok(axum::Json(list).into_response())
    })
}

async fn site(
    State(state): State<Shared>,
    Path((domain, name)): Path<(String, String)>,
) -> Result<Response, SimProblem> {
    documented_only(&state)?;
    with_existing_domain(&state, &domain, |d| {
        d.sites
            .iter()
            .find(|s| s.name == name)
            .map(|s| {
                axum::Json(json!({
                    "domain": domain,
                    "siteName": s.name,
                    "timeZone": s.time_zone,
                }))
                .into_response()
            })
            .ok_or_else(|| problem(404, format!("site {name} was not found")))
    })
}

// ---- control ------------------------------------------------------------------------------

async fn control_requests(State(state): State<Shared>) -> Response {
    axum::Json(state.log.lock().expect("request log").clone()).into_response()
}

async fn control_clear_requests(State(state): State<Shared>) -> StatusCode {
    state.log.lock().expect("request log").clear();
    StatusCode::NO_CONTENT
}

async fn control_add_fault(
    State(state): State<Shared>,
    axum::Json(rule): axum::Json<FaultRule>,
) -> StatusCode {
    state.faults.lock().expect("faults").push(rule);
    StatusCode::CREATED
}

async fn control_clear_faults(State(state): State<Shared>) -> StatusCode {
    state.faults.lock().expect("faults").clear();
    StatusCode::NO_CONTENT
}

async fn control_submissions(State(state): State<Shared>, Path(domain): Path<String>) -> Response {
    let data = state.data.lock().expect("simulator data");
    let list = data
        .get(&domain)
        .map(|d| d.submissions.clone())
        .unwrap_or_default();
    axum::Json(list).into_response()
}

/// Adds or replaces an appointment (keyed by its `appointmentId`), as
/// [`Simulator::put_appointment`](super::Simulator::put_appointment) does: load drivers change
/// the pending list of a simulator running in another process.
async fn control_put_appointment(
    State(state): State<Shared>,
    Path(domain): Path<String>,
    axum::Json(appointment): axum::Json<Value>,
) -> Result<StatusCode, SimProblem> {
    let id = match appointment.get("appointmentId") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(problem(400, "appointmentId must be a non-empty string")),
    };
    let mut data = state.data.lock().expect("simulator data");
    data.entry(domain)
        .or_default()
        .appointments
        .insert(id, appointment);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct TokenLifetime {
    seconds: u64,
}

/// Lifetime of tokens issued from now on: a short one makes the bridge renew often and
/// meet expired tokens.
async fn control_token_lifetime(
    State(state): State<Shared>,
    axum::Json(body): axum::Json<TokenLifetime>,
) -> Result<StatusCode, SimProblem> {
    if body.seconds == 0 {
        return Err(problem(400, "seconds must be at least 1"));
    }
    *state.token_lifetime.write().expect("lifetime") = Duration::from_secs(body.seconds);
    Ok(StatusCode::NO_CONTENT)
}

/// Invalidates every token issued so far: the next call with one gets 401.
async fn control_rotate_signing_key(State(state): State<Shared>) -> StatusCode {
    *state.access_key.write().expect("key") = super::tokens::SigningKey::random();
    StatusCode::NO_CONTENT
}

async fn not_found(method: Method, uri: axum::http::Uri) -> SimProblem {
    problem(404, format!("no such endpoint: {method} {}", uri.path()))
}

// ---- helpers ------------------------------------------------------------------------------

fn with_existing_domain<R>(
    state: &SimState,
    domain: &str,
    f: impl FnOnce(&mut super::DomainData) -> Result<R, SimProblem>,
) -> Result<R, SimProblem> {
    let mut data = state.data.lock().expect("simulator data");
    let d = data
        .get_mut(domain)
        .ok_or_else(|| problem(404, format!("domain {domain} was not found")))?;
    f(d)
}

/// Runs `f` for an existing appointment (comments, attachments); in strict mode only for
/// one pending reporting, as QUBS's documentation describes these endpoints.
fn with_appointment<R>(
    state: &SimState,
    domain: &str,
    id: &str,
    f: impl FnOnce(&mut super::DomainData) -> Result<R, SimProblem>,
) -> Result<R, SimProblem> {
    with_existing_domain(state, domain, |d| {
        if !d.appointments.contains_key(id) {
            return Err(problem(404, format!("appointment {id} was not found")));
        }
        if state.strict.load(Ordering::Relaxed) {
            d.pending(id)?;
        }
        f(d)
    })
}
