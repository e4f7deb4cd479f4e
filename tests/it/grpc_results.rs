//! ResultService and MappingService over gRPC, against the simulator; the scenarios that
//! reach QUBS run against today's simulator and the strict one.

use crate::common;

use common::{GRPC_TOKEN, Mode, authed, in_both_modes, start_bridge, with_pending};
use qubs_bridge::grpc::pb::mapping_service_client::MappingServiceClient;
use qubs_bridge::grpc::pb::result_service_client::ResultServiceClient;
use qubs_bridge::grpc::pb::{
    PreviewMappingRequest, SubmitDiagnosticReportRequest, SubmitOruRequest, SubmitReportRequest,
};
use serde_json::json;
use tonic::Code;

in_both_modes!(
    an_oru_becomes_one_report_and_a_retransmission_changes_nothing,
    oru_errors_get_the_promised_acks,
    a_fhir_diagnostic_report_becomes_a_report,
    a_plain_report_is_submitted_once,
);

fn oru(control_id: &str, appointment: &str, status: &str) -> String {
    [
        format!("MSH|^~\\&|RIS|HOSP|QUBS|RAD|20261127093000||ORU^R01^ORU_R01|{control_id}|P|2.5.1"),
        "PID|1||P1^^^acme^MR||Citizen^Jane".to_string(),
        format!("ORC|RE|{appointment}"),
        format!("OBR|1|{appointment}||CTHEAD^CT Head|||20261127090000|||||||||||||||202611270930|||{status}|||||||12345A&Radiologist&Rita"),
        "OBX|1|TX|||FINDINGS: No acute \\T\\ intracranial abnormality.||||||F".to_string(),
        "OBX|2|TX|||IMPRESSION: Normal | study.||||||F".replace(" | ", " \\F\\ "),
    ]
    .join("\r")
}

fn submit(message: String) -> tonic::Request<SubmitOruRequest> {
    authed(
        SubmitOruRequest {
            message: message.into_bytes(),
            domain: "acme".into(),
        },
        GRPC_TOKEN,
    )
}

fn msa_err(ack: &[u8]) -> (String, String) {
    let text = String::from_utf8(ack.to_vec()).unwrap();
    let seg = |id: &str| {
        text.split('\r')
            .find(|s| s.starts_with(id))
            .unwrap_or_default()
            .to_string()
    };
    (seg("MSA"), seg("ERR"))
}

async fn an_oru_becomes_one_report_and_a_retransmission_changes_nothing(mode: Mode) {
    let bridge = mode.start_bridge(with_pending(2), &[]).await;
    let mut client = ResultServiceClient::new(bridge.channel().await);
    let answer = client
        .submit_oru(submit(oru("MSG0001", "A0001", "F")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.ack_code, "AA", "{:?}", answer.error);
    let (msa, err) = msa_err(&answer.ack);
    assert_eq!(msa, "MSA|AA|MSG0001");
    assert!(err.is_empty());
    assert_eq!(answer.reports.len(), 1);
    let stored = bridge.sim.report("acme", "A0001").unwrap();
    assert_eq!(stored.report_status, "final");
    assert_eq!(
        stored.report_text,
        "FINDINGS: No acute & intracranial abnormality.\nIMPRESSION: Normal | study."
    );
    // 09:30 in Sydney (the appointment's site) on 27 Nov 2026 is 22:30 UTC the day before.
    assert_eq!(stored.reported_at_utc, "2026-11-26T22:30:00Z");
    assert_eq!(
        stored.interpreting_clinician_provider_number.as_deref(),
        Some("12345A")
    );
    assert_eq!(answer.reports[0].report_guid, stored.report_guid);

    let again = client
        .submit_oru(submit(oru("MSG0001", "A0001", "F")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.ack_code, "AA");
    assert_eq!(again.reports[0].report_guid, stored.report_guid);
    assert_eq!(
        bridge.sim.submissions("acme").len(),
        1,
        "the retransmission stored nothing new"
    );

    // A corrected result is a new message: it overwrites.
    let corrected = client
        .submit_oru(submit(
            oru("MSG0002", "A0001", "C").replace("Normal", "Corrected"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(corrected.ack_code, "AA");
    assert_eq!(bridge.sim.submissions("acme").len(), 2);
    assert!(
        bridge
            .sim
            .report("acme", "A0001")
            .unwrap()
            .report_text
            .contains("Corrected")
    );
}

async fn oru_errors_get_the_promised_acks(mode: Mode) {
    let sim = with_pending(2);
    sim.set_appointment_status("acme", "A0002", "FINALISED");
    let bridge = mode.start_bridge(sim, &[]).await;
    let mut client = ResultServiceClient::new(bridge.channel().await);

    let a = client
        .submit_oru(submit(oru("E1", "A9999", "F")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.ack_code, "AE");
    let (msa, err) = msa_err(&a.ack);
    assert_eq!(msa, "MSA|AE|E1");
    assert!(
        err.starts_with("ERR||OBR^1^2|204^Unknown key identifier^HL70357|E||||"),
        "{err}"
    );
    assert_eq!(a.error.unwrap().code, "not_found");

    let a = client
        .submit_oru(submit(oru("E2", "A0002", "F")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.ack_code, "AE");
    assert!(msa_err(&a.ack).1.contains("204^Unknown key identifier"));
    // Only the single-appointment GET tells "not pending" from "not found"; without it the
    // pending list and the report POST's 404 say the one thing QUBS documents.
    let expected = if mode.is_strict() {
        "not_found"
    } else {
        "not_pending"
    };
    assert_eq!(a.error.unwrap().code, expected);

    let a = client
        .submit_oru(submit(oru("E3", "A0001", "X")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.ack_code, "AE");
    let (msa, err) = msa_err(&a.ack);
    assert_eq!(msa, "MSA|AE|E3");
    assert!(
        err.starts_with("ERR||OBR^1^25|103^Table value not found^HL70357|E"),
        "{err}"
    );

    let adt = "MSH|^~\\&|A|B|C|D|20261127||ADT^A01^ADT_A01|E4|P|2.5.1\rPID|1";
    let a = client
        .submit_oru(submit(adt.into()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.ack_code, "AR");
    let (msa, err) = msa_err(&a.ack);
    assert_eq!(msa, "MSA|AR|E4");
    assert!(
        err.contains("|200^Unsupported message type^HL70357|"),
        "{err}"
    );

    let a = client
        .submit_oru(submit("hello, not HL7".into()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.ack_code, "AR");
    assert_eq!(msa_err(&a.ack).0, "MSA|AR|");

    assert!(
        bridge.sim.submissions("acme").is_empty(),
        "nothing was submitted"
    );
}

async fn a_fhir_diagnostic_report_becomes_a_report(mode: Mode) {
    let bridge = mode.start_bridge(with_pending(1), &[]).await;
    let mut client = ResultServiceClient::new(bridge.channel().await);
    let dr = json!({
        "resourceType": "DiagnosticReport",
        "id": "dr-1",
        "status": "final",
        "code": {"text": "CT Head"},
        "subject": {"display": "x"},
        "basedOn": [{"identifier": {"system": "urn:qubs:appointment", "value": "A0001"}}],
        "identifier": [{"system": "urn:qubs:appointment", "value": "A0001"}],
        "issued": "2026-11-27T01:02:03Z",
        "conclusion": "No acute abnormality."
    });
    let answer = client
        .submit_diagnostic_report(authed(
            SubmitDiagnosticReportRequest {
                domain: "acme".into(),
                diagnostic_report_json: dr.to_string(),
                idempotency_key: String::new(),
            },
            GRPC_TOKEN,
        ))
        .await;
    let answer = answer.unwrap().into_inner();
    assert_eq!(answer.reports.len(), 1);
    let stored = bridge.sim.report("acme", "A0001").unwrap();
    assert_eq!(stored.report_status, "final");
    assert!(stored.report_text.contains("No acute abnormality."));

    let e = client
        .submit_diagnostic_report(authed(
            SubmitDiagnosticReportRequest {
                domain: "acme".into(),
                diagnostic_report_json: "{not json".into(),
                idempotency_key: String::new(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

async fn a_plain_report_is_submitted_once(mode: Mode) {
    let bridge = mode.start_bridge(with_pending(1), &[]).await;
    let mut client = ResultServiceClient::new(bridge.channel().await);
    let request = || SubmitReportRequest {
        domain: "acme".into(),
        appointment_id: "A0001".into(),
        report_text: "Report text".into(),
        report_status: "Preliminary".into(),
        reported_at_utc: "2026-11-27T01:02:03Z".into(),
        ..Default::default()
    };
    let first = client
        .submit_report(authed(request(), GRPC_TOKEN))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .submit_report(authed(request(), GRPC_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.report.unwrap().report_guid,
        again.report.unwrap().report_guid
    );
    assert_eq!(bridge.sim.submissions("acme").len(), 1);
    let mut bad = request();
    bad.report_status = "draft".into();
    assert_eq!(
        client
            .submit_report(authed(bad, GRPC_TOKEN))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let mut missing = request();
    missing.appointment_id = "A404".into();
    assert_eq!(
        client
            .submit_report(authed(missing, GRPC_TOKEN))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let mut foreign = request();
    foreign.domain = "globex".into();
    assert_eq!(
        client
            .submit_report(authed(foreign, GRPC_TOKEN))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn preview_mapping_shows_output_unmapped_values_and_unread_fields() {
    let bridge = start_bridge(with_pending(0), &[]).await;
    let mut client = MappingServiceClient::new(bridge.channel().await);
    let order = json!({
        "domain": "acme",
        "appointment": {
            "appointmentId": "A1", "status": "PENDING REPORTING", "patientId": "P1",
            "patientName": "CITIZEN, Jane", "studyDescription": "CT Head", "modality": "CT",
            "priority": "whenever", "appointmentDate": "2026-11-27", "startTime": "09:30:00",
            "somethingNew": "x"
        },
        "comments": [], "attachments": [], "site": null, "config": {}
    });
    let answer = client
        .preview_mapping(authed(
            PreviewMappingRequest {
                mapping: "service_request".into(),
                input: order.to_string(),
                site_time_zone: "Australia/Sydney".into(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.errors.is_empty(), "{:?}", answer.errors);
    let sr: serde_json::Value = serde_json::from_str(&answer.output).unwrap();
    assert_eq!(sr["resourceType"], "ServiceRequest");
    assert_eq!(sr["occurrencePeriod"]["start"], "2026-11-27T09:30:00+11:00");
    assert!(
        answer
            .warnings
            .iter()
            .any(|w| w.message.contains("whenever")),
        "{:?}",
        answer.warnings
    );
    assert!(
        answer
            .unread_fields
            .iter()
            .any(|f| f.contains("somethingNew")),
        "{:?}",
        answer.unread_fields
    );
    assert!(answer.mapping_set_version.starts_with("sha256:"));

    let answer = client
        .preview_mapping(authed(
            PreviewMappingRequest {
                mapping: "oru_to_report".into(),
                input: oru("P1", "A1", "P"),
                site_time_zone: "Australia/Sydney".into(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.errors.is_empty(), "{:?}", answer.errors);
    assert!(
        answer.output.contains("\"reportStatus\": \"preliminary\""),
        "{}",
        answer.output
    );
    // HL7 positions nobody reads: the patient and the procedure code, not the status.
    for f in ["PID-5", "OBR-4"] {
        assert!(
            answer.unread_fields.iter().any(|u| u == f),
            "{f}: {:?}",
            answer.unread_fields
        );
    }
    assert!(
        !answer.unread_fields.iter().any(|u| u.starts_with("OBR-25")),
        "{:?}",
        answer.unread_fields
    );

    let e = client
        .preview_mapping(authed(
            PreviewMappingRequest {
                mapping: "nope".into(),
                input: "{}".into(),
                site_time_zone: String::new(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("service_request"), "{}", e.message());
}
