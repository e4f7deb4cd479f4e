//! Results through the durable outbox, over gRPC against the simulator: ack modes, retry
//! classes, dead letters and their operations, enhanced-mode ACKs, PDF attachments — against
//! today's simulator and the strict one.

use crate::common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{GRPC_TOKEN, Mode, authed, in_both_modes, with_pending};
use qubs_bridge::grpc::pb::outbox_service_client::OutboxServiceClient;
use qubs_bridge::grpc::pb::result_service_client::ResultServiceClient;
use qubs_bridge::grpc::pb::{
    GetOutboxEntryRequest, ListOutboxRequest, PurgeOutboxRequest, RetryOutboxRequest,
    SubmitOruRequest, SubmitOruResponse,
};
use qubs_bridge::simulator::{Fault, FaultRule};
use tonic::Code;

in_both_modes!(
    after_submit_waits_through_transient_failures_then_answers_aa,
    not_confirmed_in_time_is_ae_then_submitted_and_a_resend_is_aa_without_a_duplicate,
    after_store_answers_aa_at_once_and_submits_later,
    an_ambiguous_failure_is_retried_with_the_same_key_and_stores_one_report,
    permanent_refusals_become_dead_letters_that_operators_can_retry_and_purge,
    a_preliminary_after_the_final_is_refused,
    enhanced_mode_gets_a_commit_ack_and_an_application_ack,
    a_base64_pdf_in_obx_becomes_a_report_attachment,
    past_the_retry_horizon_a_result_becomes_a_dead_letter,
    several_order_groups_give_one_report_per_appointment,
);

fn oru_with(
    control_id: &str,
    appointment: &str,
    status: &str,
    msh_tail: &str,
    extra: &str,
) -> String {
    let mut segments = vec![
        format!(
            "MSH|^~\\&|RIS|HOSP|QUBS|RAD|20261127093000||ORU^R01^ORU_R01|{control_id}|P|2.5.1{msh_tail}"
        ),
        "PID|1||P1^^^acme^MR||Citizen^Jane".to_string(),
        format!("ORC|RE|{appointment}"),
        format!(
            "OBR|1|{appointment}||CTHEAD^CT Head|||20261127090000|||||||||||||||202611270930|||{status}"
        ),
        "OBX|1|TX|||IMPRESSION: Normal study.||||||F".to_string(),
    ];
    if !extra.is_empty() {
        segments.push(extra.to_string());
    }
    segments.join("\r")
}

fn oru(control_id: &str, appointment: &str, status: &str) -> String {
    oru_with(control_id, appointment, status, "", "")
}

async fn send(
    client: &mut ResultServiceClient<tonic::transport::Channel>,
    message: &str,
) -> SubmitOruResponse {
    client
        .submit_oru(authed(
            SubmitOruRequest {
                message: message.as_bytes().to_vec(),
                domain: "acme".into(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
}

fn segment(ack: &[u8], id: &str) -> String {
    String::from_utf8_lossy(ack)
        .split('\r')
        .find(|s| s.starts_with(id))
        .unwrap_or_default()
        .to_string()
}

/// Waits until `check` holds, up to 20 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn report_posts(sim: &qubs_bridge::simulator::RunningSimulator, appointment: &str) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with(&format!("/{appointment}/report")))
        .count()
}

/// QUBS answers 503 to report submissions.
fn report_posts_fail() -> FaultRule {
    FaultRule::new(Fault::Status {
        status: 503,
        retry_after: None,
    })
    .method("POST")
    .path("/report")
}

const FAST_RETRY: [(&str, &str); 2] = [
    ("QUBS_BRIDGE__RESULTS__RETRY_INITIAL_MS", "50"),
    ("QUBS_BRIDGE__RESULTS__RETRY_MAX_MS", "200"),
];

async fn after_submit_waits_through_transient_failures_then_answers_aa(mode: Mode) {
    let bridge = mode.start_bridge(with_pending(1), &FAST_RETRY).await;
    // Twelve 503s, more than one QUBS call retries: the outbox tries again, then QUBS
    // takes it.
    bridge.sim.add_fault(report_posts_fail().times(12));
    let mut client = ResultServiceClient::new(bridge.channel().await);
    let answer = send(&mut client, &oru("T1", "A0001", "F")).await;
    assert_eq!(answer.ack_code, "AA", "{:?}", answer.error);
    assert_eq!(answer.reports[0].state, "submitted");
    let stored = bridge.sim.report("acme", "A0001").unwrap();
    assert_eq!(answer.reports[0].report_guid, stored.report_guid);
    // All attempts carried the same key, and QUBS stored one report.
    let keys: std::collections::HashSet<_> = bridge
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/report"))
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(keys.len(), 1);
    assert_eq!(bridge.sim.submissions("acme").len(), 1);
}

async fn not_confirmed_in_time_is_ae_then_submitted_and_a_resend_is_aa_without_a_duplicate(
    mode: Mode,
) {
    let mut env = FAST_RETRY.to_vec();
    env.push(("QUBS_BRIDGE__RESULTS__ACK_WAIT_SECS", "1"));
    let bridge = mode.start_bridge(with_pending(1), &env).await;
    bridge.sim.add_fault(report_posts_fail());
    let mut client = ResultServiceClient::new(bridge.channel().await);
    let message = oru("T2", "A0001", "F");
    let answer = send(&mut client, &message).await;
    assert_eq!(answer.ack_code, "AE");
    let error = answer.error.unwrap();
    assert_eq!(error.code, "not_confirmed");
    assert_eq!(segment(&answer.ack, "MSA"), "MSA|AE|T2");
    assert!(segment(&answer.ack, "ERR").contains("|207^"));
    assert_eq!(answer.reports[0].state, "pending");
    assert!(bridge.sim.report("acme", "A0001").is_none());

    bridge.sim.clear_faults();
    eventually("the outbox submits once QUBS is back", || {
        bridge.sim.report("acme", "A0001").is_some()
    })
    .await;
    let again = send(&mut client, &message).await;
    assert_eq!(again.ack_code, "AA");
    assert_eq!(segment(&again.ack, "MSA"), "MSA|AA|T2");
    assert_eq!(bridge.sim.submissions("acme").len(), 1);
}

async fn after_store_answers_aa_at_once_and_submits_later(mode: Mode) {
    let mut env = FAST_RETRY.to_vec();
    env.push(("QUBS_BRIDGE__RESULTS__ACK_MODE", "after_store"));
    let bridge = mode.start_bridge(with_pending(1), &env).await;
    bridge.sim.add_fault(report_posts_fail());
    let mut client = ResultServiceClient::new(bridge.channel().await);
    let answer = send(&mut client, &oru("T3", "A0001", "F")).await;
    assert_eq!(answer.ack_code, "AA");
    assert_eq!(answer.reports[0].state, "pending");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(bridge.sim.report("acme", "A0001").is_none());
    bridge.sim.clear_faults();
    eventually("submitted after QUBS recovers", || {
        bridge.sim.report("acme", "A0001").is_some()
    })
    .await;
}

async fn an_ambiguous_failure_is_retried_with_the_same_key_and_stores_one_report(mode: Mode) {
    let bridge = mode.start_bridge(with_pending(1), &FAST_RETRY).await;
    // QUBS stores the report, and the connection drops before the answer.
    bridge.sim.add_fault(
        FaultRule::new(Fault::DropAfterProcessing)
            .method("POST")
            .path("/report")
            .times(1),
    );
    let mut client = ResultServiceClient::new(bridge.channel().await);
    let answer = send(&mut client, &oru("T4", "A0001", "F")).await;
    assert_eq!(answer.ack_code, "AA", "{:?}", answer.error);
    assert!(report_posts(&bridge.sim, "A0001") >= 2);
    assert_eq!(bridge.sim.submissions("acme").len(), 1);
    assert_eq!(bridge.sim.report("acme", "A0001").unwrap().revision, 1);
}

async fn permanent_refusals_become_dead_letters_that_operators_can_retry_and_purge(mode: Mode) {
    let mut env = FAST_RETRY.to_vec();
    env.push(("QUBS_BRIDGE__RESULTS__ACK_MODE", "after_store"));
    let bridge = mode.start_bridge(with_pending(1), &env).await;
    let mut client = ResultServiceClient::new(bridge.channel().await);
    // Unknown to QUBS: accepted on storing (after_store), then a dead letter.
    let answer = send(&mut client, &oru("T5", "A0404", "F")).await;
    assert_eq!(answer.ack_code, "AA");
    let id = answer.reports[0].outbox_id;
    let mut ops = OutboxServiceClient::new(bridge.channel().await);
    let start = Instant::now();
    let dead = loop {
        let e = ops
            .get_outbox_entry(authed(GetOutboxEntryRequest { id }, GRPC_TOKEN))
            .await
            .unwrap()
            .into_inner();
        if e.state == "dead" {
            break e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never dead: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.error_kind, "not_found");
    assert!(dead.last_error.contains("A0404"), "{}", dead.last_error);
    // A retransmission now gets the AE the dead letter stands for.
    let again = send(&mut client, &oru("T5", "A0404", "F")).await;
    assert_eq!(again.ack_code, "AE");
    assert_eq!(
        segment(&again.ack, "ERR").split('|').nth(3),
        Some("204^Unknown key identifier^HL70357")
    );
    let listed = ops
        .list_outbox(authed(
            ListOutboxRequest {
                state: "dead".into(),
                ..Default::default()
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    assert_eq!(listed.dead, 1);

    // The appointment appears in QUBS; the operator retries the dead letter.
    bridge.sim.put_appointment("acme", common::pending("A0404"));
    let retried = ops
        .retry_outbox(authed(
            RetryOutboxRequest {
                all_dead: true,
                ..Default::default()
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.requeued, 1);
    eventually("the retried report reaches QUBS", || {
        bridge.sim.report("acme", "A0404").is_some()
    })
    .await;
    let purge = |state: &str| {
        authed(
            PurgeOutboxRequest {
                state: state.into(),
                older_than_secs: 0,
                domain: String::new(),
            },
            GRPC_TOKEN,
        )
    };
    let purged = ops
        .purge_outbox(purge("submitted"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.purged, 1);
    let status = ops.purge_outbox(purge("pending")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // Other domains are not the caller's to see.
    let status = ops
        .list_outbox(authed(
            ListOutboxRequest {
                domain: "globex".into(),
                ..Default::default()
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

async fn a_preliminary_after_the_final_is_refused(mode: Mode) {
    let bridge = mode.start_bridge(with_pending(1), &[]).await;
    let mut client = ResultServiceClient::new(bridge.channel().await);
    assert_eq!(
        send(&mut client, &oru("F1", "A0001", "F")).await.ack_code,
        "AA"
    );
    let late = send(&mut client, &oru("P1", "A0001", "P")).await;
    assert_eq!(late.ack_code, "AE");
    assert_eq!(late.error.unwrap().code, "preliminary_after_final");
    assert_eq!(
        segment(&late.ack, "ERR").split('|').nth(2),
        Some("OBR^1^25")
    );
    assert_eq!(
        bridge.sim.report("acme", "A0001").unwrap().report_status,
        "final"
    );
    // A correction (OBR-25 C, new MSH-10) overwrites the final.
    let corrected = send(&mut client, &oru("C1", "A0001", "C")).await;
    assert_eq!(corrected.ack_code, "AA");
    assert_eq!(bridge.sim.report("acme", "A0001").unwrap().revision, 2);
}

async fn enhanced_mode_gets_a_commit_ack_and_an_application_ack(mode: Mode) {
    let bridge = mode.start_bridge(with_pending(1), &[]).await;
    let mut client = ResultServiceClient::new(bridge.channel().await);
    let answer = send(&mut client, &oru_with("E1", "A0001", "F", "|||AL|AL", "")).await;
    assert_eq!(answer.ack_code, "CA");
    assert_eq!(segment(&answer.ack, "MSA"), "MSA|CA|E1");
    assert_eq!(segment(&answer.application_ack, "MSA"), "MSA|AA|E1");
    // Not ORU^R01: a commit reject.
    let adt =
        oru_with("E2", "A0001", "F", "|||AL|AL", "").replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01");
    let answer = send(&mut client, &adt).await;
    assert_eq!(answer.ack_code, "CR");
    assert!(answer.application_ack.is_empty());
}

async fn a_base64_pdf_in_obx_becomes_a_report_attachment(mode: Mode) {
    let bridge = mode.start_bridge(with_pending(1), &[]).await;
    let pdf = b"%PDF-1.4\n% a tiny test document\n%%EOF\n";
    let b64 = base64::engine::general_purpose::STANDARD.encode(pdf);
    let obx = format!(
        "OBX|2|ED|18748-4^Diagnostic Imaging Report^LN||^Application^PDF^Base64^{b64}||||||F"
    );
    let mut client = ResultServiceClient::new(bridge.channel().await);
    let answer = send(&mut client, &oru_with("D1", "A0001", "F", "", &obx)).await;
    assert_eq!(answer.ack_code, "AA", "{:?}", answer.error);
    let report = bridge.sim.report("acme", "A0001").unwrap();
    // The base64 is not in the report text.
    assert!(!report.report_text.contains(&b64[..20]));
    let uploaded = bridge.sim.with_domain("acme", |d| {
        d.report_attachments
            .values()
            .map(|a| {
                (
                    a.appointment_id.clone(),
                    a.content_type.clone(),
                    a.content.clone(),
                )
            })
            .collect::<Vec<_>>()
    });
    if mode.is_strict() {
        // No report-attachment endpoint: the report names its PDF instead.
        assert!(uploaded.is_empty());
        assert!(
            report.report_text.starts_with("IMPRESSION: Normal study.")
                && report.report_text.ends_with(&format!(
                    "\n\n[Not attached in QUBS: A0001-report-1.pdf (application/pdf, {} bytes)]",
                    pdf.len()
                )),
            "{}",
            report.report_text
        );
        assert_eq!(answer.reports[0].report_guid, report.report_guid);
    } else {
        assert_eq!(uploaded.len(), 1);
        assert_eq!(uploaded[0].0, "A0001");
        assert_eq!(uploaded[0].1, "application/pdf");
        assert_eq!(uploaded[0].2.as_deref(), Some(&pdf[..]));
        assert_eq!(report.report_text, "IMPRESSION: Normal study.");
    }

    // Too large for QUBS: AE naming the OBX, nothing stored.
    let big = base64::engine::general_purpose::STANDARD.encode(vec![b'%'; 3 * 1024 * 1024]);
    let obx = format!("OBX|2|ED|18748-4^Report^LN||^AP^PDF^Base64^{big}||||||F");
    let answer = send(&mut client, &oru_with("D2", "A0001", "F", "", &obx)).await;
    assert_eq!(answer.ack_code, "AE");
    assert_eq!(
        segment(&answer.ack, "ERR").split('|').nth(2),
        Some("OBX^2^5")
    );
}

async fn past_the_retry_horizon_a_result_becomes_a_dead_letter(mode: Mode) {
    let mut env = FAST_RETRY.to_vec();
    env.push(("QUBS_BRIDGE__RESULTS__RETRY_HORIZON_SECS", "1"));
    env.push(("QUBS_BRIDGE__RESULTS__ACK_WAIT_SECS", "10"));
    let bridge = mode.start_bridge(with_pending(1), &env).await;
    bridge.sim.add_fault(report_posts_fail());
    let mut client = ResultServiceClient::new(bridge.channel().await);
    let answer = send(&mut client, &oru("H1", "A0001", "F")).await;
    assert_eq!(answer.ack_code, "AE");
    assert_eq!(answer.error.as_ref().unwrap().code, "qubs_unavailable");
    let err = segment(&answer.ack, "ERR");
    assert!(err.starts_with("ERR||OBR^1^2|207^Application internal error^HL70357|E||||QUBS did not take the report within the retry horizon (1 s,"), "{err}");
    assert_eq!(answer.reports[0].state, "dead");
}

async fn several_order_groups_give_one_report_per_appointment(mode: Mode) {
    let bridge = mode.start_bridge(with_pending(2), &[]).await;
    let two = [
        oru("G2", "A0001", "F"),
        "ORC|RE|A0002".to_string(),
        "OBR|2|A0002||XR^XR Chest|||20261127090000|||||||||||||||202611270930|||F".to_string(),
        "OBX|1|TX|||IMPRESSION: Clear lungs.||||||F".to_string(),
        "ORC|RE|A0001".to_string(),
        "OBR|3|A0001||CT^CT Head addendum|||20261127090000|||||||||||||||202611270930|||F"
            .to_string(),
        "OBX|1|TX|||ADDENDUM: No change.||||||F".to_string(),
    ]
    .join("\r");
    let mut client = ResultServiceClient::new(bridge.channel().await);
    let answer = send(&mut client, &two).await;
    assert_eq!(answer.ack_code, "AA", "{:?}", answer.error);
    let mut appointments: Vec<_> = answer
        .reports
        .iter()
        .map(|r| r.appointment_id.clone())
        .collect();
    appointments.sort();
    assert_eq!(appointments, ["A0001", "A0002"]);
    assert_eq!(bridge.sim.submissions("acme").len(), 2);
    assert_eq!(
        bridge.sim.report("acme", "A0001").unwrap().report_text,
        "IMPRESSION: Normal study.\n\nADDENDUM: No change."
    );
}
