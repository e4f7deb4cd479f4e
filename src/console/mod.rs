//! The web console: a page and its JSON API under `/console/` on the admin listener, for
//! operators (the outbox, the feed, live charts) and analysts (the mapping playground).
//!
//! - The page only renders what the API returns; the API calls the same library functions
//!   the CLI and gRPC call (a dead letter is retried by [`crate::outbox::Outbox::retry`]
//!   whichever way it is asked).
//! - Assets ([`assets`]) are plain HTML, CSS and JavaScript modules compiled into the
//!   binary: nothing is fetched from anywhere at build or run time.
//! - Access ([`auth`]): users configured like gRPC callers (a token hash) with roles;
//!   sessions by cookie with an idle timeout, CSRF tokens on every state change,
//!   `Authorization: Bearer` for scripts. Every API route names the role it
//!   needs in one table, [`ROUTES`], which the router consults for every request: a route
//!   missing from it is refused, never open.
//! - Every change (retry, purge, resend, promotion, rollback, an accepted golden
//!   expectation; sign-ins too) is written to the audit log ([`audit`]); promoted mapping
//!   files are kept with both texts ([`history`]).
//!   Both live in the store ([`store`]: SQLite or PostgreSQL, its own tables and
//!   migrations), so with several replicas every console shows the whole cluster's.
//! - Charts come from the process's own counters, sampled every few seconds into a ring
//!   buffer ([`samples`]); no Prometheus needed.

mod api;
pub mod assets;
pub mod audit;
pub mod auth;
pub mod history;
mod impact;
mod playground;
mod postgres;
mod promote;
mod resend;
pub mod samples;
mod settings;
mod sqlite;
pub mod store;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::json;

pub use auth::{Access, Caller, Role};
pub use settings::{ConsoleSettings, ConsoleUser};

use crate::admin::Readiness;
use crate::feed::{DestinationSettings, Feed};
use crate::live_mappings::LiveMappings;
use crate::metrics::Metrics;
use crate::outbox::Outbox;

/// Everything the console's handlers read or change.
pub struct Console {
    pub access: Access,
    pub outbox: Arc<Outbox>,
    /// The order feed, when enabled.
    pub feed: Option<Arc<Feed>>,
    pub feed_destinations: Vec<DestinationSettings>,
    /// Domains the feed watches.
    pub feed_domains: Vec<String>,
    pub readiness: Readiness,
    pub mappings: Arc<LiveMappings>,
    /// QUBS's pending list (and client): orders for the playground.
    pub pending: Arc<crate::pending_list::PendingList>,
    pub metrics: Arc<Metrics>,
    pub samples: Arc<samples::Samples>,
    pub audit: audit::AuditLog,
    /// Promoted mapping versions.
    pub history: history::History,
    /// One promotion or rollback at a time.
    pub promotions: tokio::sync::Mutex<()>,
    /// The QUBS domains the bridge serves.
    pub domains: Vec<String>,
    /// `mappings.values`, as the mappings see them in the playground.
    pub config_values: serde_json::Map<String, serde_json::Value>,
}

/// One API route and the role it needs.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    /// As the router writes it (`{id}` for a path parameter), under `/console`.
    pub path: &'static str,
    /// `None`: open (signing in).
    pub role: Option<Role>,
}

const fn route(method: &'static str, path: &'static str, role: Role) -> Route {
    Route {
        method,
        path,
        role: Some(role),
    }
}

/// Every API route with the role it needs; the router refuses anything not listed.
pub const ROUTES: &[Route] = &[
    Route {
        method: "POST",
        path: "/console/api/login",
        role: None,
    },
    route("POST", "/console/api/logout", Role::Viewer),
    route("GET", "/console/api/session", Role::Viewer),
    route("GET", "/console/api/overview", Role::Viewer),
    route("GET", "/console/api/live", Role::Viewer),
    route("GET", "/console/api/outbox", Role::Viewer),
    route("GET", "/console/api/outbox/{id}", Role::Viewer),
    route("POST", "/console/api/outbox/retry", Role::Operator),
    route("POST", "/console/api/outbox/purge", Role::Operator),
    route(
        "POST",
        "/console/api/feed/{destination}/retry",
        Role::Operator,
    ),
    route("POST", "/console/api/feed/resend", Role::Operator),
    route("GET", "/console/api/timeline", Role::Viewer),
    route("GET", "/console/api/audit", Role::Viewer),
    route("GET", "/console/api/mappings", Role::Analyst),
    route("GET", "/console/api/cases", Role::Analyst),
    route("GET", "/console/api/order", Role::Analyst),
    route("GET", "/console/api/outbox/{id}/input", Role::Analyst),
    route("POST", "/console/api/preview", Role::Analyst),
    route("POST", "/console/api/golden", Role::Analyst),
    route("POST", "/console/api/golden/accept", Role::Analyst),
    route("POST", "/console/api/impact", Role::Analyst),
    route("POST", "/console/api/promote", Role::Analyst),
    route("GET", "/console/api/history", Role::Analyst),
    route("GET", "/console/api/history/{id}", Role::Analyst),
    route("POST", "/console/api/history/{id}/rollback", Role::Analyst),
];

/// The console's pages: without a session they send the browser to the sign-in page.
pub const PAGES: &[&str] = &["/console/", "/console/index.html"];

/// Where the console is mounted once the service has built it. The admin listener starts
/// first (so `/healthz` answers during start-up); until then the console answers 503.
#[derive(Clone, Default)]
pub struct Mount(Arc<OnceLock<Router>>);

impl Mount {
    /// Serves `console` from now on.
    pub fn set(&self, console: Arc<Console>) {
        let _ = self.0.set(router(console));
    }

    /// Routes `/console` and everything under it to the console: a fallback, so that the
    /// console's router matches the whole path itself (its route table and path
    /// parameters are its own) and the admin endpoint's other routes stay as they are.
    pub fn routes<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let mount = self.clone();
        Router::new().fallback(move |request: Request| {
            let mount = mount.clone();
            async move { mount.serve(request).await }
        })
    }

    async fn serve(&self, request: Request) -> Response {
        let path = request.uri().path();
        if path != "/console" && !path.starts_with("/console/") {
            return StatusCode::NOT_FOUND.into_response();
        }
        match self.0.get() {
            Some(router) => {
                use tower::ServiceExt;
                router
                    .clone()
                    .oneshot(request)
                    .await
                    .unwrap_or_else(|e| match e {})
            }
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the console is starting; try again in a moment",
            ),
        }
    }
}

/// The console's router (paths include `/console`).
fn router(console: Arc<Console>) -> Router {
    let api = Router::new()
        .route("/console/api/login", post(api::login))
        .route("/console/api/logout", post(api::logout))
        .route("/console/api/session", get(api::session))
        .route("/console/api/overview", get(api::overview))
        .route("/console/api/live", get(api::live))
        .route("/console/api/outbox", get(api::outbox_list))
        .route("/console/api/outbox/{id}", get(api::outbox_entry))
        .route("/console/api/outbox/retry", post(api::outbox_retry))
        .route("/console/api/outbox/purge", post(api::outbox_purge))
        .route(
            "/console/api/feed/{destination}/retry",
            post(api::feed_retry),
        )
        .route("/console/api/feed/resend", post(resend::resend))
        .route("/console/api/timeline", get(api::timeline))
        .route("/console/api/audit", get(api::audit))
        .route("/console/api/mappings", get(playground::mappings))
        .route("/console/api/cases", get(playground::cases))
        .route("/console/api/order", get(playground::live_order))
        .route(
            "/console/api/outbox/{id}/input",
            get(playground::outbox_input),
        )
        .route("/console/api/preview", post(playground::preview))
        .route("/console/api/golden", post(playground::golden_run))
        .route(
            "/console/api/golden/accept",
            post(playground::golden_accept),
        )
        .route("/console/api/impact", post(impact::impact))
        .route("/console/api/promote", post(promote::promote))
        .route("/console/api/history", get(promote::history))
        .route("/console/api/history/{id}", get(promote::history_entry))
        .route(
            "/console/api/history/{id}/rollback",
            post(promote::rollback),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such console API") })
        .route_layer(middleware::from_fn_with_state(console.clone(), guard));
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(page))
        .route("/console/index.html", get(page))
        .route("/console/login", get(login_page))
        .route("/console/assets/{*file}", get(assets::serve))
        .merge(api)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such console page") })
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

/// Authenticates every API request and checks the role its route needs ([`ROUTES`]).
async fn guard(
    State(console): State<Arc<Console>>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = matched.as_ref().map(MatchedPath::as_str).unwrap_or("");
    let Some(route) = ROUTES
        .iter()
        .find(|r| r.path == path && r.method == method.as_str())
    else {
        // Fail closed: a handler nobody gave a role to is not served.
        return error(StatusCode::FORBIDDEN, "this console route has no role");
    };
    if auth::changes_state(&method) && !is_json(request.headers()) {
        // A cross-site form can post only form encodings; JSON needs a script on our page
        // (a cross-origin script would need a CORS preflight, which we never grant).
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send state changes as JSON (Content-Type: application/json)",
        );
    }
    let Some(role) = route.role else {
        return next.run(request).await;
    };
    let caller = match console.access.authenticate(&method, request.headers()) {
        Ok(c) => c,
        Err(refused) => {
            if matches!(refused, auth::Refused::Csrf(_)) {
                tracing::warn!(route = path, "console request refused: no valid CSRF token");
            }
            return error(refused.status(), &refused.message());
        }
    };
    if !caller.user.has(role) {
        return error(
            StatusCode::FORBIDDEN,
            &format!(
                "`{}` needs the {} role; {} has {}",
                path.trim_start_matches("/console"),
                role.as_str(),
                caller.user.name,
                caller
                    .user
                    .roles()
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        })
}

/// The console page, or the sign-in page for a browser without a session.
async fn page(State(console): State<Arc<Console>>, request: Request) -> Response {
    match console.access.authenticate(&Method::GET, request.headers()) {
        Ok(_) => assets::page("index.html"),
        Err(_) => Redirect::to("/console/login").into_response(),
    }
}

async fn login_page() -> Response {
    assets::page("login.html")
}

/// Headers on every console answer: a strict content security policy (only our own
/// scripts and styles; no inline script, no framing), no sniffing, no referrer, and no
/// caching of anything that may carry data.
async fn security_headers(request: Request, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with("/console/assets/");
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !is_asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// An answer given instead of a result, boxed: a `Response` is too large to be the error
/// of every `Result` that may carry one.
pub(crate) struct Refusal(Box<Response>);

impl From<Response> for Refusal {
    fn from(r: Response) -> Refusal {
        Refusal(Box::new(r))
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// [`error`] as a [`Refusal`].
pub(crate) fn refuse(status: StatusCode, message: &str) -> Refusal {
    error(status, message).into()
}

/// A JSON error answer: `{"error": "..."}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    let mut r = (status, axum::Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"qubs-bridge console\""),
        );
    }
    r
}
