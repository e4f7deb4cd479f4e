//! Shared set-up for the integration tests: a simulator on 127.0.0.1:0 and a client
//! configured for it with fast retry timings.

#![allow(dead_code)]

use qubs_bridge::config::{QubsSettings, Settings};
use qubs_bridge::qubs::Client;
use qubs_bridge::simulator::{RunningSimulator, Simulator};
use serde_json::{Value, json};

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
