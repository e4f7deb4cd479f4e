//! The admin HTTP endpoint: `/healthz` (the process is alive), `/readyz` (QUBS answers
//! for every configured domain, the mappings are loaded and the store answers),
//! `/metrics` (Prometheus text) and the web console under `/console/` (behind its own
//! sign-in). Bound to loopback by default; see README "Security".

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::live_mappings::LiveMappings;
use crate::metrics::Metrics;

/// What the last QUBS check of one domain found.
#[derive(Debug, Clone, Serialize)]
pub struct DomainHealth {
    pub ready: bool,
    /// When the check finished (UTC).
    pub checked_at: String,
    /// Appointments pending reporting at that time.
    pub pending: Option<usize>,
    /// Sites whose time zone was read from the sites endpoint.
    pub sites: Option<usize>,
    /// Where site time zones come from: `sites endpoint`, or `configuration` and why.
    pub time_zones: String,
    /// What needs an operator's eye without stopping the domain (no PHI): a sites
    /// endpoint that fails, sites without a usable time zone, pages without appointment ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Why the domain is not ready (no PHI: QUBS problem types, statuses, ids).
    pub error: Option<String>,
    /// QUBS refused the bridge's credentials (the token endpoint refused, or the API said 401).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub credentials_refused: bool,
}

/// What the last check of the store found (the replica's heartbeat).
#[derive(Debug, Clone, Serialize)]
pub struct StoreHealth {
    /// `sqlite` or `postgresql`.
    pub backend: &'static str,
    pub ready: bool,
    pub checked_at: String,
    /// Why the store is not ready (connection errors; never data).
    pub error: Option<String>,
    /// This replica's id, as `store check` lists it.
    pub replica: String,
}

/// Readiness shared between the checks that update it and the endpoint that shows it.
#[derive(Clone, Default)]
pub struct Readiness {
    domains: Arc<RwLock<BTreeMap<String, DomainHealth>>>,
    mappings: Arc<RwLock<Option<Arc<LiveMappings>>>>,
    store: Arc<RwLock<Option<StoreHealth>>>,
}

impl Readiness {
    pub fn set(&self, domain: &str, health: DomainHealth) {
        self.domains
            .write()
            .expect("readiness")
            .insert(domain.to_string(), health);
    }

    /// The store's last check; from the first one on, readiness requires it to pass.
    pub fn set_store(&self, health: StoreHealth) {
        *self.store.write().expect("readiness") = Some(health);
    }

    /// Shows the mapping set's state (and requires it loaded) from now on.
    pub fn set_mappings(&self, mappings: Arc<LiveMappings>) {
        *self.mappings.write().expect("readiness") = Some(mappings);
    }

    /// Ready when every domain has been checked and answered, mappings are loaded and the
    /// store answers.
    pub fn is_ready(&self, expected: &[String]) -> bool {
        let store_ok = self
            .store
            .read()
            .expect("readiness")
            .as_ref()
            .is_none_or(|s| s.ready);
        if !store_ok {
            return false;
        }
        let domains = self.domains.read().expect("readiness");
        let mappings_ok = self
            .mappings
            .read()
            .expect("readiness")
            .as_ref()
            .is_none_or(|m| m.is_loaded());
        mappings_ok
            && expected
                .iter()
                .all(|d| domains.get(d).is_some_and(|h| h.ready))
    }

    /// The mapping set's state for `/readyz`.
    fn mapping_state(&self) -> serde_json::Value {
        match self.mappings.read().expect("readiness").as_ref() {
            None => serde_json::Value::Null,
            Some(m) => serde_json::json!({
                "version": m.current().version(),
                "loaded": m.is_loaded(),
                "reloadError": m.failing(),
            }),
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, DomainHealth> {
        self.domains.read().expect("readiness").clone()
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    domains: Arc<Vec<String>>,
    metrics: Arc<Metrics>,
}

/// Binds the admin endpoint; serves until `shutdown` is cancelled. The console answers
/// 503 until the service mounts it (`console`).
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    domains: Vec<String>,
    metrics: Arc<Metrics>,
    console: Option<crate::console::Mount>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text));
    if let Some(console) = console {
        app = app.merge(console.routes());
    }
    let app = app.with_state(AdminState {
        readiness,
        domains: Arc::new(domains),
        metrics,
    });
    let task = tokio::spawn(async move {
        let served = axum::serve(
            listener.tap_io(|tcp| {
                // Small answers go out at once, not after the peer's delayed ACK.
                let _ = tcp.set_nodelay(true);
            }),
            app,
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin endpoint stopped");
        }
    });
    Ok((bound, task))
}

async fn metrics_text(State(s): State<AdminState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let ready = s.readiness.is_ready(&s.domains);
    let body = serde_json::json!({
        "ready": ready,
        "domains": s.readiness.snapshot(),
        "mappings": s.readiness.mapping_state(),
        "store": s.readiness.store.read().expect("readiness").clone(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}
