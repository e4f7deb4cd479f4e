//! What QUBS lacks is said once per cause, without PHI: a missing sites endpoint is one
//! warning however many probe rounds and orders meet it; a pending page none of whose items
//! has an appointment id is one line, not one per item.

use std::time::Duration;

use crate::common;
use crate::common::{GRPC_TOKEN, Mode, authed, pending, with_pending};
use qubs_bridge::grpc::pb;
use serde_json::json;

const PATIENT: &str = "Philippa Quarrington";

#[tokio::test]
async fn a_missing_sites_endpoint_and_missing_ids_are_each_said_once() {
    let logs = common::logs::exclusive("info");
    let capture = &logs.capture;

    let sim = with_pending(1);
    sim.put_appointment("acme", {
        let mut a = pending("A0002");
        a["scheduledSite"] = "Lakeside MRI".into();
        a["patientName"] = PATIENT.into();
        a
    });
    let bridge = Mode::Strict
        .start_bridge(
            sim,
            &[("QUBS_BRIDGE__SERVER__QUBS_PROBE_INTERVAL_SECS", "1")],
        )
        .await;
    let mut orders = pb::order_service_client::OrderServiceClient::new(bridge.channel().await);
    for id in ["A0001", "A0002", "A0002"] {
        // A0002's site has no configured zone: its order may not map; it is asked anyway.
        let _ = orders
            .get_order(authed(
                pb::GetOrderRequest {
                    domain: "acme".into(),
                    appointment_id: id.into(),
                    formats: vec![],
                },
                GRPC_TOKEN,
            ))
            .await;
    }
    // Three probe rounds at least, each asking for the sites.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let sites_asked = bridge
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/acme/sites"))
        .count();
    assert!(sites_asked >= 3, "{sites_asked}");
    let text = capture.text();
    let said = text.matches("QUBS has no sites endpoint here").count();
    assert_eq!(said, 1, "{text}");
    assert!(!text.contains(PATIENT), "PHI in the logs");

    // A page whose items all lack `appointmentId`: one line for the page.
    let sim = with_pending(0);
    for i in 0..5 {
        sim.put_raw_item(
            "acme",
            &format!("K{i}"),
            json!({"id": format!("A{i}"), "status": "PENDING REPORTING", "patientName": PATIENT}),
        );
    }
    let f = common::start(sim, &[]).await;
    let page = f.client.pending_page("acme", None, None).await.unwrap();
    assert_eq!(page.skipped.len(), 5);
    let text = capture.text();
    assert_eq!(
        text.matches("no item of a pending page has an appointmentId")
            .count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.matches("skipped a malformed pending appointment")
            .count(),
        0,
        "{text}"
    );
    assert!(!text.contains(PATIENT), "PHI in the logs");
}
