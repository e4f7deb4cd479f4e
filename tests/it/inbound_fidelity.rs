//! What real senders send reaches QUBS right: the inbound golden inputs (ORU^R01 habits
//! and published FHIR DiagnosticReports) submitted over gRPC with the real tonic client,
//! and the report the simulator stored checked field by field against the source message.

use std::path::PathBuf;

use base64::Engine;
use qubs_bridge::grpc::pb::result_service_client::ResultServiceClient;
use qubs_bridge::grpc::pb::{SubmitDiagnosticReportRequest, SubmitOruRequest};
use qubs_bridge::simulator::Simulator;
use tonic::Code;

use crate::common::{self, Bridge, GRPC_TOKEN, authed, start_bridge};

fn case_file(case: &str, file: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("mappings/tests")
        .join(case)
        .join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The appointments the cases name, pending at a Sydney site.
async fn bridge() -> Bridge {
    let sim = Simulator::new();
    sim.add_site("acme", "Main", "Australia/Sydney");
    for id in [
        "A100211", "A100244", "A100255", "US99120", "A100277", "A100301", "A100302", "A100303",
        "A100304",
    ] {
        sim.put_appointment("acme", common::pending(id));
    }
    start_bridge(sim, &[]).await
}

async fn submit_oru(bridge: &Bridge, case: &str) {
    let mut client = ResultServiceClient::new(bridge.channel().await);
    let answer = client
        .submit_oru(authed(
            SubmitOruRequest {
                message: case_file(case, "input.hl7"),
                domain: "acme".into(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap_or_else(|e| panic!("{case}: {e}"))
        .into_inner();
    assert_eq!(answer.ack_code, "AA", "{case}: {:?}", answer.error);
}

async fn submit_dr(bridge: &Bridge, case: &str) -> Result<(), tonic::Status> {
    let mut client = ResultServiceClient::new(bridge.channel().await);
    let json = String::from_utf8(case_file(case, "input.json")).unwrap();
    client
        .submit_diagnostic_report(authed(
            SubmitDiagnosticReportRequest {
                domain: "acme".into(),
                diagnostic_report_json: json,
                idempotency_key: String::new(),
            },
            GRPC_TOKEN,
        ))
        .await
        .map(|_| ())
}

fn assert_clean_text(case: &str, text: &str) {
    assert!(!text.contains('\r'), "{case}: CR in report text: {text:?}");
    assert!(!text.contains('\u{fffd}'), "{case}: U+FFFD in {text:?}");
    assert!(
        !text.contains("\\."),
        "{case}: an FT command left in {text:?}"
    );
}

#[tokio::test]
async fn oru_senders_habits_reach_qubs_right() {
    let bridge = bridge().await;

    // A retracted row (OBX-11 W), a deleted one (D), coded rows, FT formatting, and an
    // OBR-32 written XCN-style.
    submit_oru(&bridge, "oru-retracted-coded-formatted").await;
    let r = bridge.sim.report("acme", "A100211").unwrap();
    assert_eq!(
        r.report_text,
        "BILATERAL MAMMOGRAM\n\nClinical: screening.\nComparison: 2024.\n\n\
         Findings: scattered fibroglandular density.\n\
         No suspicious mass, calcification or distortion.\n\
         BI-RADS 1 Negative\nRoutine screening in 2 years"
    );
    assert!(!r.report_text.contains("SUSPICIOUS MASS"));
    assert!(!r.report_text.contains("typed in error"));
    assert!(!r.report_text.contains("BI1^"));
    assert_clean_text("retracted", &r.report_text);
    assert_eq!(r.report_status, "final");
    assert_eq!(
        r.interpreting_clinician_name.as_deref(),
        Some("DR SARAH K WILLIAMS")
    );
    assert_eq!(
        r.interpreting_clinician_provider_number.as_deref(),
        Some("1730152098")
    );
    // OBR-22 10:12 at +11:00.
    assert_eq!(r.reported_at_utc, "2026-11-26T23:12:00Z");

    // No OBR-25: the text rows' OBX-11 are F and P, so the report is preliminary.
    submit_oru(&bridge, "oru-status-in-obx11-only").await;
    let r = bridge.sim.report("acme", "A100244").unwrap();
    assert_eq!(r.report_status, "preliminary");
    assert_eq!(
        r.report_text,
        "CT BRAIN: No acute intracranial haemorrhage.\n\
         Provisional: small vessel change, to be reviewed."
    );
    assert_eq!(
        r.interpreting_clinician_name.as_deref(),
        Some("Dr Priya Raman")
    );
    assert_eq!(
        r.interpreting_clinician_provider_number.as_deref(),
        Some("12345A")
    );

    // No OBR-32: the radiologist from OBX-16.
    submit_oru(&bridge, "oru-radiologist-in-obx16-only").await;
    let r = bridge.sim.report("acme", "A100255").unwrap();
    assert_eq!(
        r.interpreting_clinician_name.as_deref(),
        Some("Dr Tomás Ó Súilleabháin")
    );
    assert_eq!(
        r.interpreting_clinician_provider_number.as_deref(),
        Some("4471220X")
    );
    assert_eq!(
        r.report_text,
        "XR RIGHT ANKLE: No fracture.\nSoft tissue swelling laterally."
    );
    assert_eq!(r.report_status, "final");

    // Two ORDER_OBSERVATION groups of one accession: one report, posted once.
    submit_oru(&bridge, "oru-split-report-one-accession").await;
    let r = bridge.sim.report("acme", "US99120").unwrap();
    assert_eq!(
        r.report_text,
        "ULTRASOUND ABDOMEN: Liver normal in size and echotexture.\nGallbladder: no calculi.\n\n\
         Kidneys: normal size, no hydronephrosis.\nIMPRESSION: Normal abdominal ultrasound."
    );
    assert_eq!(r.report_status, "final");
    assert_eq!(r.revision, 1, "one submission, not one per group");
    assert_eq!(
        r.interpreting_clinician_name.as_deref(),
        Some("Mei-Ling Chen")
    );
    // The later of the two groups' OBR-22 (13:10 at +11:00).
    assert_eq!(r.reported_at_utc, "2026-11-27T02:10:00Z");

    // Windows-1252 bytes and no MSH-18: decoded, not replaced, not refused.
    submit_oru(&bridge, "oru-windows-1252-no-msh18").await;
    let r = bridge.sim.report("acme", "A100277").unwrap();
    assert_eq!(
        r.report_text,
        "CT CHEST – no pulmonary embolus. Café-au-lait lesion noted on skin.\n\
         Nodule 4 mm (RUL) – “low risk”; follow-up in 12 months per Fleischner."
    );
    assert_clean_text("windows-1252", &r.report_text);
    assert_eq!(
        r.interpreting_clinician_name.as_deref(),
        Some("Dr Séan O’Brien")
    );
    assert_eq!(
        r.interpreting_clinician_provider_number.as_deref(),
        Some("55120Z")
    );
}

#[tokio::test]
async fn published_diagnostic_reports_reach_qubs_right() {
    let bridge = bridge().await;

    // US Core chest X-ray: XHTML presentedForm read as plain text; its conclusion is
    // already in the text, so it is not appended again.
    submit_dr(&bridge, "dr-uscore-chest-xray-xhtml")
        .await
        .unwrap();
    let r = bridge.sim.report("acme", "A100301").unwrap();
    assert!(
        r.report_text.starts_with(
            "Result\n\nChest Portable\n\nINDICATION/CLINICAL QUESTION: Fever / Pneumonia\n\n"
        ),
        "{:?}",
        r.report_text
    );
    assert!(r.report_text.contains(
        "LUNGS AND PLEURA:\n\nClear lungs. Normal pulmonary vascularity.\nNo pleural effusion.\nNo pneumothorax."
    ));
    assert!(
        r.report_text
            .contains("IMPRESSION:\n\nNo acute abnormality.")
    );
    assert!(!r.report_text.contains("Conclusion:"));
    assert!(!r.report_text.contains('<') && !r.report_text.contains("&amp;"));
    assert_clean_text("chest-xray", &r.report_text);
    assert_eq!(r.report_status, "final");
    assert_eq!(r.reported_at_utc, "2019-02-04T19:43:30Z");

    // US Core bone density: a PDF only. The PDF is uploaded as a report attachment, byte
    // for byte, and the text says where the report is.
    submit_dr(&bridge, "dr-uscore-bone-density-pdf")
        .await
        .unwrap();
    let r = bridge.sim.report("acme", "A100302").unwrap();
    assert_eq!(r.report_text, "The report is attached as PDF (1 file(s)).");
    assert_eq!(
        r.interpreting_clinician_name.as_deref(),
        Some("Dr Ronald Bone")
    );
    let source: serde_json::Value =
        serde_json::from_slice(&case_file("dr-uscore-bone-density-pdf", "input.json")).unwrap();
    let pdf = base64::engine::general_purpose::STANDARD
        .decode(source["presentedForm"][0]["data"].as_str().unwrap())
        .unwrap();
    assert!(pdf.starts_with(b"%PDF-"));
    let uploaded = bridge.sim.with_domain("acme", |d| {
        d.report_attachments
            .values()
            .filter(|a| a.appointment_id == "A100302")
            .map(|a| (a.content_type.clone(), a.content.clone()))
            .collect::<Vec<_>>()
    });
    assert_eq!(uploaded.len(), 1);
    assert_eq!(uploaded[0].0, "application/pdf");
    assert_eq!(uploaded[0].1.as_deref(), Some(&pdf[..]));

    // HL7 core brain CT with a contained order and a contained radiologist.
    submit_dr(&bridge, "dr-hl7-brainct-contained-order")
        .await
        .unwrap();
    let r = bridge.sim.report("acme", "A100303").unwrap();
    assert_eq!(r.report_text, "CT brains: large tumor sphenoid/clivus.");
    assert_eq!(
        r.interpreting_clinician_name.as_deref(),
        Some("Dr Ronald Bone")
    );
    assert_eq!(
        r.interpreting_clinician_provider_number.as_deref(),
        Some("2203118K")
    );
    assert_eq!(r.reported_at_utc, "2012-12-01T11:00:00Z");

    // Naming no appointment: refused, the error listing where the bridge looked.
    let e = submit_dr(&bridge, "dr-uscore-chest-xray-no-appointment")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains(
            "looked at: read.appointment.basedOnIdentifier | read.appointment.containedServiceRequest \
             | read.appointment.serviceRequestId | read.appointment.reportIdentifier"
        ),
        "{}",
        e.message()
    );
    // An identifier in another system is not an appointment id, even when it matches one.
    let e = submit_dr(&bridge, "dr-hl7-ultrasound-foreign-identifier")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(bridge.sim.report("acme", "A100304").is_none());
}

#[tokio::test]
async fn a_conclusion_missing_from_the_text_is_appended() {
    let bridge = bridge().await;
    let dr = serde_json::json!({
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "code": {"text": "CT Chest"},
        "basedOn": [{"reference": "ServiceRequest/A100301"}],
        "conclusion": "Small RUL nodule.",
        "presentedForm": [{
            "contentType": "text/html",
            "data": base64::engine::general_purpose::STANDARD
                .encode("<p>CT CHEST</p><p>No embolus.\r\n</p>")
        }]
    });
    let mut client = ResultServiceClient::new(bridge.channel().await);
    client
        .submit_diagnostic_report(authed(
            SubmitDiagnosticReportRequest {
                domain: "acme".into(),
                diagnostic_report_json: dr.to_string(),
                idempotency_key: String::new(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap();
    let r = bridge.sim.report("acme", "A100301").unwrap();
    assert_eq!(
        r.report_text,
        "CT CHEST\n\nNo embolus.\n\nConclusion: Small RUL nodule."
    );
    assert_eq!(r.report_status, "preliminary");
}
