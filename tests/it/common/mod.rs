//! Shared set-up for the integration tests: a simulator on 127.0.0.1:0 and a client
//! configured for it with fast retry timings.

#![allow(dead_code)]

pub mod browser;
pub mod consumer;
pub mod install;
pub mod logs;
pub mod pki;
pub mod postgres;
pub mod python;
pub mod replicas;

use qubs_bridge::config::{ClientAuthMethod, QubsSettings, Settings};
use qubs_bridge::qubs::Client;
use qubs_bridge::simulator::{ClientAuth, RunningSimulator, Simulator};
use serde_json::{Value, json};

/// Which QUBS an end-to-end scenario runs against; [`in_both_modes!`] runs it against each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The simulator serves everything the bridge may assume, and the bridge is told the
    /// single-appointment GET exists (`qubs.endpoints.appointment = true`).
    Full,
    /// The simulator serves only what QUBS's documentation describes (strict mode, HTTP
    /// Basic only at the token endpoint); the bridge runs on its defaults, with
    /// `client_secret_basic` and the test site's time zone configured, as an operator would.
    Strict,
}

impl Mode {
    pub fn is_strict(self) -> bool {
        self == Mode::Strict
    }

    /// Makes `sim` serve as this mode says.
    pub fn prepare(self, sim: &Simulator) {
        if self.is_strict() {
            sim.set_strict_docs(true);
            sim.set_client_auth(ClientAuth::Basic);
        }
    }

    /// The bridge's settings for this mode.
    pub fn configure(self, settings: &mut Settings) {
        match self {
            Mode::Full => settings.qubs.endpoints.appointment = true,
            Mode::Strict => {
                settings.qubs.auth.method = ClientAuthMethod::ClientSecretBasic;
                settings
                    .qubs
                    .site_time_zones
                    .insert("Main".into(), "Australia/Sydney".into());
            }
        }
    }

    /// [`service_settings`] for this mode.
    pub fn service_settings(
        self,
        sim: &RunningSimulator,
        extra_env: &[(&str, &str)],
        outbox_dir: &std::path::Path,
    ) -> Settings {
        let mut settings = service_settings(sim, extra_env, outbox_dir);
        self.configure(&mut settings);
        settings
    }

    /// [`start_bridge`] in this mode.
    pub async fn start_bridge(self, sim: Simulator, extra_env: &[(&str, &str)]) -> Bridge {
        self.start_bridge_with(sim, extra_env, |_| {}).await
    }

    /// [`start_bridge_with`] in this mode; `tweak` has the last say.
    pub async fn start_bridge_with(
        self,
        sim: Simulator,
        extra_env: &[(&str, &str)],
        tweak: impl FnOnce(&mut Settings),
    ) -> Bridge {
        self.prepare(&sim);
        start_bridge_with(sim, extra_env, |s| {
            self.configure(s);
            tweak(s)
        })
        .await
    }
}

/// Runs each scenario `async fn name(mode: Mode)` once per [`Mode`], as the tests
/// `name::full` and `name::strict`; a test attribute may come first (default
/// `#[tokio::test]`). (Unused by the log tests, which share this module.)
#[allow(unused_macros)]
macro_rules! in_both_modes {
    (#[$test:meta] $($name:ident),+ $(,)?) => {$(
        mod $name {
            #[$test]
            async fn full() {
                super::$name($crate::common::Mode::Full).await
            }
            #[$test]
            async fn strict() {
                super::$name($crate::common::Mode::Strict).await
            }
        }
    )+};
    ($($name:ident),+ $(,)?) => {
        $crate::common::in_both_modes!(#[tokio::test] $($name),+);
    };
}
#[allow(unused_imports)]
pub(crate) use in_both_modes;

pub const CLIENT_ID: &str = "test-client";
pub const CLIENT_SECRET: &str = "test-secret-8d1f0c";

/// A running simulator and a client pointed at it.
pub struct Fixture {
    pub sim: RunningSimulator,
    pub client: Client,
    pub settings: QubsSettings,
}

/// Settings for `sim` with test-friendly timings, adjusted by `tweak`.
pub fn settings_for(sim: &RunningSimulator, extra_env: &[(&str, &str)]) -> QubsSettings {
    let mut env: Vec<(String, String)> = vec![
        ("QUBS_BRIDGE__QUBS__BASE_URL".into(), sim.base_url()),
        ("QUBS_BRIDGE__QUBS__TOKEN_URL".into(), sim.token_url()),
        ("QUBS_BRIDGE__QUBS__CLIENT_ID".into(), CLIENT_ID.into()),
        (
            "QUBS_BRIDGE__QUBS__CLIENT_SECRET".into(),
            CLIENT_SECRET.into(),
        ),
        ("QUBS_BRIDGE__QUBS__DOMAINS".into(), "acme".into()),
        (
            "QUBS_BRIDGE__QUBS__REQUEST_TIMEOUT_MS".into(),
            "3000".into(),
        ),
        (
            "QUBS_BRIDGE__QUBS__RETRY__INITIAL_BACKOFF_MS".into(),
            "10".into(),
        ),
        (
            "QUBS_BRIDGE__QUBS__RETRY__MAX_BACKOFF_MS".into(),
            "100".into(),
        ),
        (
            "QUBS_BRIDGE__QUBS__RETRY__MAX_ELAPSED_MS".into(),
            "15000".into(),
        ),
    ];
    for (k, v) in extra_env {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    Settings::load_with_env(None, env)
        .expect("test settings are valid")
        .qubs
}

/// Starts `sim` (with the test client allowed on `acme`) and builds a client for it.
pub async fn start(sim: Simulator, extra_env: &[(&str, &str)]) -> Fixture {
    sim.add_client(CLIENT_ID, CLIENT_SECRET, &["acme"]);
    let running = sim
        .start(([127, 0, 0, 1], 0).into())
        .await
        .expect("simulator starts");
    let settings = settings_for(&running, extra_env);
    let client = Client::new(&settings).expect("client builds");
    Fixture {
        sim: running,
        client,
        settings,
    }
}

/// A minimal pending appointment.
pub fn pending(id: &str) -> Value {
    json!({
        "appointmentId": id,
        "status": "PENDING REPORTING",
        "scheduledSite": "Main",
        "patientId": format!("P-{id}"),
        "patientName": format!("Patient {id}"),
    })
}

/// A simulator with `n` pending appointments `A0001`… in domain `acme` and one site.
pub fn with_pending(n: usize) -> Simulator {
    let sim = Simulator::new();
    sim.add_site("acme", "Main", "Australia/Sydney");
    for i in 1..=n {
        sim.put_appointment("acme", pending(&format!("A{i:04}")));
    }
    sim
}

/// The bearer token the test gRPC caller uses (allowed domain `acme` only).
pub const GRPC_TOKEN: &str = "grpc-test-token-3b9e";

/// A simulator plus the whole service (admin, gRPC) wired to it, on loopback ports.
pub struct Bridge {
    pub sim: RunningSimulator,
    pub service: qubs_bridge::service::RunningService,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Holds the service's outbox; removed with the bridge.
    pub outbox_dir: tempfile::TempDir,
}

/// Full settings for a service talking to `sim`, with extra environment overrides.
pub fn service_settings(
    sim: &RunningSimulator,
    extra_env: &[(&str, &str)],
    outbox_dir: &std::path::Path,
) -> qubs_bridge::config::Settings {
    let mut env: Vec<(String, String)> = vec![
        ("QUBS_BRIDGE__QUBS__BASE_URL".into(), sim.base_url()),
        ("QUBS_BRIDGE__QUBS__TOKEN_URL".into(), sim.token_url()),
        ("QUBS_BRIDGE__QUBS__CLIENT_ID".into(), CLIENT_ID.into()),
        (
            "QUBS_BRIDGE__QUBS__CLIENT_SECRET".into(),
            CLIENT_SECRET.into(),
        ),
        ("QUBS_BRIDGE__QUBS__DOMAINS".into(), "acme".into()),
        (
            "QUBS_BRIDGE__QUBS__RETRY__INITIAL_BACKOFF_MS".into(),
            "10".into(),
        ),
        (
            "QUBS_BRIDGE__QUBS__RETRY__MAX_BACKOFF_MS".into(),
            "100".into(),
        ),
        (
            "QUBS_BRIDGE__QUBS__RETRY__MAX_ELAPSED_MS".into(),
            "5000".into(),
        ),
        (
            "QUBS_BRIDGE__SERVER__ADMIN_LISTEN".into(),
            "127.0.0.1:0".into(),
        ),
        (
            "QUBS_BRIDGE__SERVER__GRPC_LISTEN".into(),
            "127.0.0.1:0".into(),
        ),
        ("QUBS_BRIDGE__MLLP__LISTEN".into(), "127.0.0.1:0".into()),
        // Tests that watch the probe shorten this.
        (
            "QUBS_BRIDGE__SERVER__QUBS_PROBE_INTERVAL_SECS".into(),
            "3600".into(),
        ),
        (
            "QUBS_BRIDGE__SERVER__SHUTDOWN_GRACE_SECS".into(),
            "5".into(),
        ),
    ];
    for (k, v) in extra_env {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    let mut settings = Settings::load_unchecked(None, env).expect("settings load");
    // Every service gets its own outbox, in a directory the caller cleans up.
    settings.store.path = outbox_dir.join("bridge.db");
    settings.grpc.clients.push(qubs_bridge::config::GrpcClient {
        name: "engine".into(),
        token_sha256: Some(qubs_bridge::grpc::auth::hash_token(GRPC_TOKEN)),
        certificate_cn: None,
        domains: vec!["acme".into()],
    });
    settings
}

/// Starts `sim` (the test client allowed on `acme`) and the service against it.
pub async fn start_bridge(sim: Simulator, extra_env: &[(&str, &str)]) -> Bridge {
    start_bridge_with(sim, extra_env, |_| {}).await
}

/// As [`start_bridge`], with a last say over the settings.
pub async fn start_bridge_with(
    sim: Simulator,
    extra_env: &[(&str, &str)],
    tweak: impl FnOnce(&mut qubs_bridge::config::Settings),
) -> Bridge {
    sim.add_client(CLIENT_ID, CLIENT_SECRET, &["acme"]);
    let running = sim
        .start(([127, 0, 0, 1], 0).into())
        .await
        .expect("simulator starts");
    let outbox_dir = tempfile::tempdir().expect("temp dir");
    let mut settings = service_settings(&running, extra_env, outbox_dir.path());
    tweak(&mut settings);
    settings.validate().expect("valid test settings");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let service = qubs_bridge::service::start(&settings, shutdown.clone())
        .await
        .expect("service starts");
    Bridge {
        sim: running,
        service,
        shutdown,
        outbox_dir,
    }
}

impl Bridge {
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.service.grpc_addr)
    }

    /// The text of an admin endpoint page (`/metrics`, `/readyz`...).
    pub async fn admin_text(&self, page: &str) -> String {
        reqwest::get(format!("http://{}{page}", self.service.admin_addr))
            .await
            .expect("admin endpoint answers")
            .text()
            .await
            .expect("admin page body")
    }

    /// A channel to the gRPC API.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.grpc_url())
            .unwrap()
            .connect()
            .await
            .expect("gRPC connects")
    }
}

/// Adds `authorization: Bearer <token>` to a request.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Polls `check` every 20 ms until it holds; panics naming `what` after `limit`.
pub async fn eventually(what: &str, limit: std::time::Duration, mut check: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?}: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
