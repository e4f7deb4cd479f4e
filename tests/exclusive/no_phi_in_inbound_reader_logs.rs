//! The inbound readers' warnings are logged, and without PHI: an ORU^R01 in Windows-1252
//! with no MSH-18, and a DiagnosticReport with a presentedForm the bridge does not fetch.

use crate::common;

use base64::Engine;
use common::{GRPC_TOKEN, authed, pending, start_bridge};
use qubs_bridge::grpc::pb::result_service_client::ResultServiceClient;
use qubs_bridge::grpc::pb::{SubmitDiagnosticReportRequest, SubmitOruRequest};
use qubs_bridge::simulator::Simulator;

const PATIENT: &str = "Hélène Dubois";
const CLINICIAN: &str = "Séan O’Brien";
const TEXT: &str = "Café-au-lait lesion";

#[tokio::test]
async fn reader_warnings_are_logged_without_phi() {
    let logs_turn = common::logs::exclusive("trace,h2=info,hyper=info,tower=info,rustls=info");
    let capture = &logs_turn.capture;
    let sim = Simulator::new();
    sim.add_site("acme", "Main", "Australia/Sydney");
    sim.put_appointment("acme", pending("A1"));
    sim.put_appointment("acme", pending("A2"));
    let bridge = start_bridge(sim, &[]).await;
    let mut grpc = ResultServiceClient::new(bridge.channel().await);

    let oru = [
        "MSH|^~\\&|RIS|H|QUBS|RAD|20261127093000||ORU^R01|W1|P|2.3".to_string(),
        format!("PID|1||P1||{}", PATIENT.replace(' ', "^")),
        format!(
            "OBR|1|A1||CT^CT|||20261127090000|||||||||||||||202611270930|||F|||||||9&{}",
            CLINICIAN.replace(' ', "&")
        ),
        format!("OBX|1|TX|||{TEXT} – noted.||||||F"),
    ]
    .join("\r");
    let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(&oru);
    assert!(!unmappable && std::str::from_utf8(&bytes).is_err());
    let answer = grpc
        .submit_oru(authed(
            SubmitOruRequest {
                message: bytes.into_owned(),
                domain: "acme".into(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.ack_code, "AA", "{:?}", answer.error);
    assert_eq!(
        bridge.sim.report("acme", "A1").unwrap().report_text,
        format!("{TEXT} – noted.")
    );

    let report = serde_json::json!({
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"text": "CT"},
        "basedOn": [{"identifier": {"system": "urn:qubs:appointment", "value": "A2"}}],
        "presentedForm": [
            {"contentType": "text/plain",
             "data": base64::engine::general_purpose::STANDARD.encode(format!("{TEXT}, {PATIENT}"))},
            {"contentType": "application/pdf", "url": "https://example.org/reports/hélène-dubois.pdf"}
        ]
    });
    grpc.submit_diagnostic_report(authed(
        SubmitDiagnosticReportRequest {
            domain: "acme".into(),
            diagnostic_report_json: report.to_string(),
            idempotency_key: String::new(),
        },
        GRPC_TOKEN,
    ))
    .await
    .unwrap();

    let logs = capture.text();
    assert!(
        logs.contains("read as Windows-1252"),
        "charset warning logged"
    );
    assert!(logs.contains("W1"), "with the message's MSH-10");
    assert!(
        logs.contains("presentedForm[1] (application/pdf) has a url but no data"),
        "presentedForm warning logged"
    );
    for s in [
        PATIENT,
        "Hélène",
        "Dubois",
        "dubois",
        CLINICIAN,
        "O’Brien",
        TEXT,
        "Café",
        "au-lait",
    ] {
        assert!(!logs.contains(s), "logged PHI: {s:?}");
    }
}
