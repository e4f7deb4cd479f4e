//! An embedded, faithful QUBS Integrations API simulator (axum), for tests, `serve --demo`
//! and `qubs-bridge simulator`.
//!
//! It issues signed OAuth2 tokens with domain claims and real expiry, serves every endpoint
//! the bridge uses with RFC 7807 errors whose `requestId` is the (echoed or generated)
//! `X-Correlation-Id`, pages with opaque cursors, serves presigned attachment URLs that
//! expire, and enforces the report rules (required fields, case-insensitive status, the
//! 2,097,152-byte limit, 404 unless PENDING REPORTING, overwrite, `Idempotency-Key` kept 24 h
//! with replay and 409, and 409 for a duplicate while the first is still being processed).
//! Tests inject faults ([`FaultRule`]) and read the request log.
//!
//! By default it also serves what the bridge may be configured to assume (the
//! single-appointment GET, the sites endpoints, report attachments). **Strict mode**
//! ([`Simulator::set_strict_docs`], `qubs-bridge simulator --strict-docs`) serves only what
//! QUBS's own documentation pages describe, as the strictest reading of them:
//! - no `GET .../appointments/{id}`, no `/sites` endpoints, no report attachments (404);
//! - comments and attachments (and their downloads) only for appointments pending
//!   reporting ("for the requested pending reporting appointment"), 404 otherwise;
//! - DynamoDB-style paging (the docs' `DDB_NEXT_TOKEN`): short pages and empty pages that
//!   still carry a `nextToken` (see `DomainData::strict_pending_page`);
//! - token answers without `expires_in` (the JWT's `exp` says it); which way the client
//!   credentials may come is [`Simulator::set_client_auth`], for either mode.
//!
//! Nothing outside `cli/` and the tests uses this module: the bridge talks to it over HTTP
//! exactly as it talks to QUBS.

mod demo;
mod faults;
mod routes;
mod state;
mod tokens;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::serve::ListenerExt;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

pub use demo::{DEMO_CLIENT_ID, DEMO_DOMAIN, demo_clinicians, demo_patient_names, demo_patients};
pub use faults::{Fault, FaultRule};
pub use state::{
    AttachmentRecord, DomainData, PENDING_REPORTING, ReportAttachmentRecord, StoredReport,
    Submission,
};

use state::SiteRecord;
use tokens::SigningKey;

/// How the token endpoint accepts client credentials (QUBS documents none of it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// In the form body or as HTTP Basic.
    #[default]
    Either,
    /// HTTP Basic only (`client_secret_basic`).
    Basic,
    /// In the form body only (`client_secret_post`).
    Post,
}

/// What the token endpoint insists on.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenRules {
    pub client_auth: ClientAuth,
    pub scope: Option<String>,
    pub audience: Option<String>,
}

/// An API client the simulator accepts at its token endpoint.
#[derive(Clone)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: String,
    pub domains: Vec<String>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("domains", &self.domains)
            .finish_non_exhaustive()
    }
}

/// One request as the simulator saw it, for tests to assert on.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub seq: u64,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub correlation_id: String,
    pub idempotency_key: Option<String>,
    /// The answer's status; 0 while unanswered, or when the client went away first.
    pub status: u16,
    /// The injected fault, if one applied.
    pub fault: Option<String>,
}

pub(crate) struct SimState {
    data: Mutex<std::collections::BTreeMap<String, DomainData>>,
    clients: RwLock<Vec<ClientCredentials>>,
    access_key: RwLock<SigningKey>,
    presign_key: SigningKey,
    faults: Mutex<Vec<FaultRule>>,
    log: Mutex<Vec<RequestRecord>>,
    seq: AtomicU64,
    token_requests: AtomicU64,
    token_lifetime: RwLock<Duration>,
    token_rules: RwLock<TokenRules>,
    /// Serve only what QUBS's documentation describes (module doc).
    strict: std::sync::atomic::AtomicBool,
    idempotency_retention: RwLock<Duration>,
    /// `http://host:port` once listening: presigned URLs point here.
    origin: RwLock<String>,
}

/// A QUBS simulator: build its data, then [`Simulator::start`] it. Clones share state.
#[derive(Clone)]
pub struct Simulator {
    state: Arc<SimState>,
}

impl Default for Simulator {
    fn default() -> Self {
        Simulator::new()
    }
}

impl Simulator {
    /// An empty simulator: no clients, no domains.
    pub fn new() -> Simulator {
        Simulator {
            state: Arc::new(SimState {
                data: Mutex::new(Default::default()),
                clients: RwLock::new(Vec::new()),
                access_key: RwLock::new(SigningKey::random()),
                presign_key: SigningKey::random(),
                faults: Mutex::new(Vec::new()),
                log: Mutex::new(Vec::new()),
                seq: AtomicU64::new(0),
                token_requests: AtomicU64::new(0),
                token_lifetime: RwLock::new(Duration::from_secs(3600)),
                token_rules: RwLock::new(TokenRules::default()),
                strict: Default::default(),
                idempotency_retention: RwLock::new(Duration::from_secs(24 * 3600)),
                origin: RwLock::new(String::new()),
            }),
        }
    }

    /// The demo data set (sites in several time zones, dozens of appointments with their
    /// oddities) and a demo client for domain `acme` with a fresh random secret.
    pub fn demo() -> Simulator {
        let sim = Simulator::new();
        demo::seed(&sim);
        sim
    }

    /// Adds `count` generated pending appointments to the demo domain (load tests).
    pub fn add_bulk_appointments(&self, count: u32) {
        demo::seed_bulk(self, count);
    }

    /// Accept these credentials at the token endpoint.
    pub fn add_client(&self, client_id: &str, client_secret: &str, domains: &[&str]) {
        self.state
            .clients
            .write()
            .expect("clients")
            .push(ClientCredentials {
                client_id: client_id.into(),
                client_secret: client_secret.into(),
                domains: domains.iter().map(|d| d.to_string()).collect(),
            });
    }

    /// The credentials registered for `client_id`.
    pub fn client(&self, client_id: &str) -> Option<ClientCredentials> {
        self.state
            .clients
            .read()
            .expect("clients")
            .iter()
            .find(|c| c.client_id == client_id)
            .cloned()
    }

    /// Runs `f` on a domain's data (created empty if new).
    pub fn with_domain<R>(&self, domain: &str, f: impl FnOnce(&mut DomainData) -> R) -> R {
        let mut data = self.state.data.lock().expect("simulator data");
        f(data.entry(domain.to_string()).or_default())
    }

    pub fn add_site(&self, domain: &str, name: &str, time_zone: &str) {
        self.with_domain(domain, |d| {
            d.sites.push(SiteRecord {
                name: name.into(),
                time_zone: time_zone.into(),
            })
        });
    }

    /// Adds or replaces an appointment (keyed by its `appointmentId`).
    pub fn put_appointment(&self, domain: &str, appointment: Value) {
        let id = match &appointment["appointmentId"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        self.with_domain(domain, |d| d.appointments.insert(id, appointment));
    }

    /// Adds an item to the pending list exactly as given, even without an id (for
    /// malformed-item tests); it is stored under `key`.
    pub fn put_raw_item(&self, domain: &str, key: &str, item: Value) {
        self.with_domain(domain, |d| d.appointments.insert(key.to_string(), item));
    }

    pub fn remove_appointment(&self, domain: &str, appointment_id: &str) -> Option<Value> {
        self.with_domain(domain, |d| d.appointments.remove(appointment_id))
    }

    /// Whether the pending list returns this appointment (it stays readable by id either
    /// way): how a test makes a pass over the list miss a pending order.
    pub fn set_listed(&self, domain: &str, appointment_id: &str, listed: bool) {
        self.with_domain(domain, |d| {
            if listed {
                d.unlisted.remove(appointment_id);
            } else {
                d.unlisted.insert(appointment_id.to_string());
            }
        });
    }

    pub fn set_appointment_status(&self, domain: &str, appointment_id: &str, status: &str) {
        self.with_domain(domain, |d| {
            if let Some(a) = d.appointments.get_mut(appointment_id) {
                a["status"] = Value::String(status.into());
            }
        });
    }

    pub fn add_comment(&self, domain: &str, appointment_id: &str, comment: Value) {
        self.with_domain(domain, |d| {
            d.comments
                .entry(appointment_id.into())
                .or_default()
                .push(comment)
        });
    }

    /// Adds an attachment; `meta` is listed as given, plus `url` and `urlExpiresAtUtc`.
    pub fn add_attachment(
        &self,
        domain: &str,
        appointment_id: &str,
        meta: Map<String, Value>,
        content_type: &str,
        content: Bytes,
    ) {
        self.with_domain(domain, |d| {
            d.attachments
                .entry(appointment_id.into())
                .or_default()
                .push(AttachmentRecord {
                    meta,
                    content_type: content_type.into(),
                    content,
                })
        });
    }

    /// The report QUBS holds for an appointment.
    pub fn report(&self, domain: &str, appointment_id: &str) -> Option<StoredReport> {
        self.with_domain(domain, |d| d.reports.get(appointment_id).cloned())
    }

    /// Every accepted report submission of a domain, in order (idempotent replays excluded).
    pub fn submissions(&self, domain: &str) -> Vec<Submission> {
        self.with_domain(domain, |d| d.submissions.clone())
    }

    /// Every appointment id of a domain.
    pub fn appointment_ids(&self, domain: &str) -> Vec<String> {
        self.with_domain(domain, |d| d.appointments.keys().cloned().collect())
    }

    /// Requests seen so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.log.lock().expect("request log").clone()
    }

    pub fn clear_requests(&self) {
        self.state.log.lock().expect("request log").clear();
    }

    /// Token endpoint calls so far (granted or not).
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::Relaxed)
    }

    pub fn add_fault(&self, rule: FaultRule) {
        self.state.faults.lock().expect("faults").push(rule);
    }

    pub fn clear_faults(&self) {
        self.state.faults.lock().expect("faults").clear();
    }

    /// Lifetime of tokens issued from now on (QUBS: 60 minutes).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        *self.state.token_lifetime.write().expect("lifetime") = lifetime;
    }

    /// Serve only what QUBS's documentation describes (see the module doc), or everything.
    pub fn set_strict_docs(&self, strict: bool) {
        self.state.strict.store(strict, Ordering::Relaxed);
    }

    pub fn is_strict_docs(&self) -> bool {
        self.state.strict.load(Ordering::Relaxed)
    }

    /// Which way the token endpoint takes client credentials.
    pub fn set_client_auth(&self, client_auth: ClientAuth) {
        self.state
            .token_rules
            .write()
            .expect("token rules")
            .client_auth = client_auth;
    }

    /// A `scope` and an `audience` the token request must carry (`None`: any or none).
    pub fn require_token_params(&self, scope: Option<&str>, audience: Option<&str>) {
        let mut rules = self.state.token_rules.write().expect("token rules");
        rules.scope = scope.map(str::to_string);
        rules.audience = audience.map(str::to_string);
    }

    /// The demo sites and their time zones, as `qubs.site_time_zones` lines would name them
    /// (for a strict simulator, which has no sites endpoint).
    pub fn site_time_zones(&self, domain: &str) -> Vec<(String, String)> {
        self.with_domain(domain, |d| {
            d.sites
                .iter()
                .map(|s| (s.name.clone(), s.time_zone.clone()))
                .collect()
        })
    }

    /// How long idempotency keys are kept (QUBS: 24 hours).
    pub fn set_idempotency_retention(&self, retention: Duration) {
        *self.state.idempotency_retention.write().expect("retention") = retention;
    }

    /// Invalidates every token issued so far: the next call with one gets 401.
    pub fn rotate_signing_key(&self) {
        *self.state.access_key.write().expect("key") = SigningKey::random();
    }

    /// Listens on `addr` (use port 0 for any free port) and serves until shut down.
    pub async fn start(&self, addr: SocketAddr) -> std::io::Result<RunningSimulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        *self.state.origin.write().expect("origin") = format!("http://{addr}");
        let shutdown = CancellationToken::new();
        let app = routes::router(self.state.clone());
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(
                listener.tap_io(|tcp| {
                    // Small answers go out at once, not after the peer's delayed ACK.
                    let _ = tcp.set_nodelay(true);
                }),
                app,
            )
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "QUBS simulator stopped");
            }
        });
        tracing::info!(%addr, "QUBS simulator listening");
        Ok(RunningSimulator {
            sim: self.clone(),
            addr,
            shutdown,
            task: Some(task),
        })
    }
}

/// A listening simulator. Dereferences to [`Simulator`] for data, faults and the log.
pub struct RunningSimulator {
    sim: Simulator,
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningSimulator {
    /// The API root to configure as `qubs.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/integrations/v1", self.addr)
    }

    /// The token endpoint to configure as `qubs.token_url`.
    pub fn token_url(&self) -> String {
        format!("http://{}/oauth2/token", self.addr)
    }

    /// Stops accepting requests and waits for in-flight ones.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl std::ops::Deref for RunningSimulator {
    type Target = Simulator;
    fn deref(&self) -> &Simulator {
        &self.sim
    }
}

impl Drop for RunningSimulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
