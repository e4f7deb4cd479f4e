//! PHI and secrets never reach the logs through the web console: signing in (a good and a
//! wrong token), the playground running an order and a broken draft with patient data, a
//! dead letter found, retried and shown on its timeline, the audit log — every log level on.

use crate::common;

use std::time::Duration;

use common::{GRPC_TOKEN, authed, start_bridge_with, with_pending};
use qubs_bridge::console::{ConsoleUser, Role};
use qubs_bridge::grpc::pb::SubmitOruRequest;
use qubs_bridge::grpc::pb::result_service_client::ResultServiceClient;
use serde_json::{Value, json};

const PATIENT: &str = "Wilhelmina Thistlewood";
const TEXT: &str = "Cavernous haemangioma of the left hepatic lobe";
const TOKEN: &str = "console-secret-token-81c2";
const WRONG: &str = "console-wrong-token-19fa";

#[tokio::test]
async fn the_console_logs_no_phi_and_no_tokens() {
    let logs_turn = common::logs::exclusive("trace,h2=info,hyper=info,tower=info,rustls=info");
    let capture = &logs_turn.capture;
    let bridge = start_bridge_with(
        with_pending(1),
        &[
            ("QUBS_BRIDGE__RESULTS__ACK_MODE", "after_store"),
            ("QUBS_BRIDGE__RESULTS__RETRY_INITIAL_MS", "20"),
            ("QUBS_BRIDGE__RESULTS__RETRY_MAX_MS", "50"),
            ("QUBS_BRIDGE__MAPPINGS__WATCH", "false"),
        ],
        |s| {
            s.console.users = vec![ConsoleUser {
                name: "root".into(),
                token_sha256: Some(qubs_bridge::grpc::auth::hash_token(TOKEN)),
                roles: vec![Role::Viewer, Role::Analyst, Role::Operator],
                domains: Vec::new(),
            }];
        },
    )
    .await;
    let base = format!("http://{}/console/api", bridge.service.admin_addr);
    let http = reqwest::Client::new();
    let call = |method: &str, path: &str, body: Value| {
        let url = format!("{base}/{path}");
        let r = if method == "GET" {
            http.get(url)
        } else {
            http.post(url).json(&body)
        };
        async move {
            r.bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };

    // Sign-ins: a wrong token, then the right one.
    for token in [WRONG, TOKEN] {
        http.post(format!("{base}/login"))
            .json(&json!({"token": token}))
            .send()
            .await
            .unwrap();
    }
    // The playground with patient data in the input, and a broken draft quoting it.
    let order = json!({
        "domain": "acme",
        "appointment": {"appointmentId": "A0001", "patientName": PATIENT, "clinicalNotes": TEXT,
                         "status": "PENDING REPORTING", "patientId": "P-1"},
        "comments": [{"guid": "c1", "commentText": TEXT}],
    });
    let run = call(
        "POST",
        "preview",
        json!({"mapping": "orm_o01", "input": order.to_string()}),
    )
    .await;
    assert!(
        run["output"].as_str().unwrap().contains("Thistlewood"),
        "{run}"
    );
    let text = std::fs::read_to_string("mappings/orm_o01.yaml").unwrap();
    let broken = format!("{text}\n  - target: PID-5\n    valu: \"{PATIENT}\"\n");
    let refused = call(
        "POST",
        "preview",
        json!({"mapping": "orm_o01", "input": order.to_string(),
               "draft": {"file": "orm_o01.yaml", "text": broken}}),
    )
    .await;
    assert!(refused["diagnostics"].is_array(), "{refused}");

    // A result with patient data for an unknown appointment: a dead letter, found, retried.
    let oru = [
        "MSH|^~\\&|RIS|HOSP|QUBS|RAD|20261127093000||ORU^R01^ORU_R01|CONSOLE-PHI-1|P|2.5.1"
            .to_string(),
        format!(
            "PID|1||P1^^^acme^MR||{}||19440229|F",
            PATIENT.replace(' ', "^")
        ),
        "ORC|RE|A0404".to_string(),
        "OBR|1|A0404||CT^CT|||20261127090000|||||||||||||||202611270930|||F".to_string(),
        format!("OBX|1|TX|||FINDINGS: {TEXT}.||||||F"),
    ]
    .join("\r");
    let id = ResultServiceClient::new(bridge.channel().await)
        .submit_oru(authed(
            SubmitOruRequest {
                message: oru.into_bytes(),
                domain: "acme".into(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .reports[0]
        .outbox_id;
    let started = std::time::Instant::now();
    while call("GET", &format!("outbox/{id}"), Value::Null).await["state"] != "dead" {
        assert!(started.elapsed() < Duration::from_secs(20), "never dead");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    call("GET", "outbox?q=A0404", Value::Null).await;
    bridge.sim.put_appointment("acme", common::pending("A0404"));
    let retried = call("POST", "outbox/retry", json!({"ids": [id]})).await;
    assert_eq!(retried["requeued"], 1);
    common::eventually(
        "the retried report reaches QUBS",
        Duration::from_secs(20),
        || bridge.sim.report("acme", "A0404").is_some(),
    )
    .await;
    call("GET", "timeline?domain=acme&id=A0404", Value::Null).await;
    call("GET", "audit", Value::Null).await;
    call("GET", "overview", Value::Null).await;

    let logs = capture.text();
    assert!(
        logs.contains("console: dead letters requeued"),
        "the capture saw the console's own lines"
    );
    for secret in [
        PATIENT,
        "Thistlewood",
        "Wilhelmina",
        TEXT,
        "haemangioma",
        TOKEN,
        WRONG,
    ] {
        if let Some(at) = logs.find(secret) {
            let line = logs[..at].rfind('\n').map_or(0, |i| i + 1);
            panic!(
                "`{secret}` is in the logs: {}",
                logs[line..].lines().next().unwrap_or_default()
            );
        }
    }
}
