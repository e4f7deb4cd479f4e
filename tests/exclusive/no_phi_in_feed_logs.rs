//! PHI never reaches the logs on the order feed's path: polling, mapping failures, every kind
//! of consumer answer (including an AE whose text quotes the patient), file drops and
//! WatchOrders, with every log level on.

use crate::common;

use std::time::Duration;

use common::consumer::{Consumer, Reply};
use common::{GRPC_TOKEN, authed};
use qubs_bridge::feed::{DestinationKind, DestinationSettings};
use qubs_bridge::grpc::pb::{self, feed_service_client::FeedServiceClient};
use qubs_bridge::simulator::Simulator;
use serde_json::json;

const PATIENT: &str = "Wilhelmina Thistlewood";
const CLINICAL: &str = "Suspected cavernous haemangioma";
const COMMENT: &str = "Claustrophobic, prefers the wide-bore magnet";

#[tokio::test(flavor = "multi_thread")]
async fn the_feed_logs_no_phi() {
    let logs_turn = common::logs::exclusive("trace,h2=info,hyper=info,tower=info,rustls=info");
    let capture = &logs_turn.capture;

    let sim = Simulator::new();
    sim.add_site("acme", "Main", "Australia/Sydney");
    for id in ["A1", "A2", "A3", "A4"] {
        sim.put_appointment(
            "acme",
            json!({
                "appointmentId": id, "status": "PENDING REPORTING", "scheduledSite": "Main",
                "patientId": format!("P-{id}"),
                "patientName": PATIENT, "dateOfBirth": "1944-02-29", "clinicalInfo": CLINICAL,
            }),
        );
        sim.add_comment(
            "acme",
            id,
            json!({"guid": format!("c-{id}"), "commentType": "AA", "commentText": COMMENT}),
        );
    }
    // Not mappable (no such date): logged by rule, not value.
    sim.put_appointment(
        "acme",
        json!({"appointmentId": "A5", "status": "PENDING REPORTING", "scheduledSite": "Main",
               "patientName": PATIENT, "appointmentDate": "2026-02-31", "startTime": "09:00"}),
    );
    let consumer = Consumer::start().await;
    consumer.script("A1", &[Reply::Ack("AE")]);
    consumer.script("A2", &[Reply::Malformed, Reply::CloseMidFrame]);
    consumer.script("A3", &[Reply::WrongControlId, Reply::Silent]);
    let addr = consumer.addr;
    let out = tempfile::tempdir().unwrap();
    let drop_dir = out.path().to_path_buf();
    let bridge = common::start_bridge_with(sim, &[], |s| {
        s.feed.enabled = true;
        s.feed.poll_interval_secs = 1;
        s.feed.destinations = vec![
            DestinationSettings {
                name: "ris".into(),
                address: Some(addr.to_string()),
                ack_timeout_secs: 1,
                retry_initial_ms: 20,
                retry_max_ms: 50,
                ..Default::default()
            },
            DestinationSettings {
                name: "files".into(),
                kind: DestinationKind::File,
                directory: Some(drop_dir),
                ..Default::default()
            },
        ];
    })
    .await;
    consumer.wait_accepted(3, Duration::from_secs(30)).await;
    let mut stream = FeedServiceClient::new(bridge.channel().await)
        .watch_orders(authed(
            pb::WatchOrdersRequest {
                domain: "acme".into(),
                formats: vec![],
                after_cursor: "0".into(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    // The consumers did get the patient data: it is in the messages, not the logs.
    let orm = &first.order.unwrap().outputs[0].content;
    assert!(orm.contains("Thistlewood"), "the message carries the name");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let logs = capture.text();
    assert!(
        logs.contains("feed message not delivered"),
        "failures were logged"
    );
    assert!(
        logs.contains("order does not map"),
        "the mapping failure was logged"
    );
    for phi in [
        PATIENT,
        "Thistlewood",
        "Wilhelmina",
        "19440229",
        "1944-02-29",
        CLINICAL,
        COMMENT,
    ] {
        assert!(!logs.contains(phi), "{phi:?} leaked into the logs");
    }
}
