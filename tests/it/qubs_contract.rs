//! The bridge against what QUBS documents: with its assumptions switched off it asks for
//! nothing else; readiness and alerts where QUBS differs from what is assumed; the
//! settings for PDFs; a removal and a conflict that only the documented endpoints can
//! tell.

use crate::common;

use std::time::Duration;

use base64::Engine;
use common::consumer::Consumer;
use common::{GRPC_TOKEN, Mode, authed, start_bridge_with, with_pending};
use qubs_bridge::grpc::pb;
use qubs_bridge::simulator::{Fault, FaultRule};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn oru(control_id: &str, appointment: &str, extra: &str) -> String {
    let mut segments = vec![
        format!("MSH|^~\\&|RIS|HOSP|QUBS|RAD|20261127093000||ORU^R01^ORU_R01|{control_id}|P|2.5.1"),
        "PID|1||P1^^^acme^MR||Citizen^Jane".to_string(),
        format!("ORC|RE|{appointment}"),
        format!("OBR|1|{appointment}||CT^CT Head|||20261127090000|||||||||||||||202611270930|||F"),
        "OBX|1|TX|||IMPRESSION: Normal study.||||||F".to_string(),
    ];
    if !extra.is_empty() {
        segments.push(extra.to_string());
    }
    segments.join("\r")
}

async fn submit_oru(bridge: &common::Bridge, message: &str) -> pb::SubmitOruResponse {
    pb::result_service_client::ResultServiceClient::new(bridge.channel().await)
        .submit_oru(authed(
            pb::SubmitOruRequest {
                message: message.as_bytes().to_vec(),
                domain: "acme".into(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn get_order(bridge: &common::Bridge, id: &str) -> Result<pb::Order, tonic::Status> {
    pb::order_service_client::OrderServiceClient::new(bridge.channel().await)
        .get_order(authed(
            pb::GetOrderRequest {
                domain: "acme".into(),
                appointment_id: id.into(),
                formats: vec![pb::OutputFormat::SourceJson as i32],
            },
            GRPC_TOKEN,
        ))
        .await
        .map(|r| r.into_inner().order.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_assumptions_off_only_documented_endpoints_are_asked() {
    // Today's simulator serves everything; the bridge is told QUBS has no sites endpoint
    // (and, by default, no single-appointment GET).
    let consumer = Consumer::start().await;
    let addr = consumer.addr;
    let bridge = start_bridge_with(
        with_pending(3),
        &[
            ("QUBS_BRIDGE__QUBS__SITES__ENDPOINT", "false"),
            ("QUBS_BRIDGE__QUBS__DEFAULT_TIME_ZONE", "Australia/Sydney"),
        ],
        |s| {
            s.feed.enabled = true;
            s.feed.poll_interval_secs = 1;
            s.feed.poll_jitter = 0.0;
            s.feed.on_removed = qubs_bridge::feed::OnRemoved::Send;
            s.feed.destinations = vec![qubs_bridge::feed::DestinationSettings {
                name: "ris".into(),
                address: Some(addr.to_string()),
                ..Default::default()
            }];
        },
    )
    .await;
    consumer.wait_accepted(3, WAIT).await;
    let order = get_order(&bridge, "A0001").await.unwrap();
    let source: serde_json::Value = serde_json::from_str(&order.outputs[0].content).unwrap();
    assert_eq!(source["site"]["timeZone"], "Australia/Sydney");
    let answer = submit_oru(&bridge, &oru("C1", "A0002", "")).await;
    assert_eq!(answer.ack_code, "AA", "{:?}", answer.error);
    assert_eq!(
        bridge.sim.report("acme", "A0002").unwrap().reported_at_utc,
        "2026-11-26T22:30:00Z",
        "09:30 in Sydney, the configured zone"
    );
    bridge.sim.remove_appointment("acme", "A0003");
    consumer.wait_accepted(4, WAIT).await;

    let documented = |method: &str, path: &str| {
        let api = path.strip_prefix("/integrations/v1/acme/reporting/appointments/");
        match (method, api) {
            ("POST", None) => path == "/oauth2/token",
            ("GET", Some("pending")) => true,
            ("GET", Some(rest)) => {
                let parts: Vec<&str> = rest.split('/').collect();
                matches!(parts.as_slice(), [_, "comments" | "attachments"])
            }
            ("POST", Some(rest)) => rest.ends_with("/report") && rest.matches('/').count() == 1,
            _ => false,
        }
    };
    let asked: Vec<(String, String)> = bridge
        .sim
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path))
        .filter(|(m, p)| !documented(m, p))
        .collect();
    assert!(asked.is_empty(), "undocumented calls: {asked:?}");
}

#[tokio::test]
async fn without_a_sites_endpoint_the_domain_is_ready_on_configured_zones() {
    let bridge = Mode::Strict
        .start_bridge(
            with_pending(2),
            &[("QUBS_BRIDGE__SERVER__QUBS_PROBE_INTERVAL_SECS", "1")],
        )
        .await;
    let mut readyz = serde_json::Value::Null;
    for _ in 0..100 {
        readyz = serde_json::from_str(&bridge.admin_text("/readyz").await).unwrap();
        if readyz["domains"]["acme"]["checked_at"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acme = &readyz["domains"]["acme"];
    assert_eq!(readyz["ready"], true, "{readyz}");
    assert_eq!(acme["pending"], 2);
    assert_eq!(
        acme["time_zones"], "configuration (the sites endpoint is not there)",
        "{readyz}"
    );
    assert!(acme.get("warnings").is_none(), "{readyz}");
}

#[tokio::test]
async fn a_page_whose_items_all_lack_the_appointment_id_is_an_alert() {
    let sim = with_pending(0);
    for i in 0..3 {
        // QUBS naming the id differently.
        sim.put_raw_item(
            "acme",
            &format!("K{i}"),
            json!({"id": format!("A{i}"), "status": "PENDING REPORTING"}),
        );
    }
    let bridge = start_bridge_with(sim, &[], |_| {}).await;
    let mut readyz = serde_json::Value::Null;
    for _ in 0..100 {
        readyz = serde_json::from_str(&bridge.admin_text("/readyz").await).unwrap();
        if readyz["domains"]["acme"]["checked_at"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acme = &readyz["domains"]["acme"];
    assert_eq!(acme["ready"], true, "an alert, not a red domain: {readyz}");
    assert_eq!(acme["pending"], 0);
    let warning = acme["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.starts_with("3 pending item(s) on pages where no item had an appointmentId"),
        "{readyz}"
    );
    let metrics = bridge.admin_text("/metrics").await;
    assert!(
        metrics.contains(r#"qubs_bridge_qubs_pending_pages_without_ids_total{domain="acme"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn pdfs_become_a_note_or_nothing_as_results_attachments_says() {
    let pdf = b"%PDF-1.4\n% a tiny test document\n%%EOF\n";
    let b64 = base64::engine::general_purpose::STANDARD.encode(pdf);
    let obx = format!("OBX|2|ED|18748-4^Report^LN||^Application^PDF^Base64^{b64}||||||F");
    for (setting, note) in [("inline_note", true), ("off", false)] {
        // Today's simulator, which would take uploads: none is made either way.
        let bridge = Mode::Full
            .start_bridge(
                with_pending(1),
                &[("QUBS_BRIDGE__RESULTS__ATTACHMENTS", setting)],
            )
            .await;
        let answer = submit_oru(&bridge, &oru("P1", "A0001", &obx)).await;
        assert_eq!(answer.ack_code, "AA", "{setting}: {:?}", answer.error);
        let text = bridge.sim.report("acme", "A0001").unwrap().report_text;
        let expected = if note {
            format!(
                "IMPRESSION: Normal study.\n\n[Not attached in QUBS: A0001-report-1.pdf (application/pdf, {} bytes)]",
                pdf.len()
            )
        } else {
            "IMPRESSION: Normal study.".to_string()
        };
        assert_eq!(text, expected, "{setting}");
        assert_eq!(bridge.sim.submissions("acme").len(), 1, "{setting}");
        let uploads = bridge
            .sim
            .requests()
            .iter()
            .filter(|r| r.path.contains("/report/attachments"))
            .count();
        assert_eq!(uploads, 0, "{setting}");
    }
}

/// Polls of `acme` the feed has finished.
async fn polls(bridge: &common::Bridge) -> u64 {
    pb::feed_service_client::FeedServiceClient::new(bridge.channel().await)
        .get_feed_status(authed(pb::GetFeedStatusRequest {}, GRPC_TOKEN))
        .await
        .unwrap()
        .into_inner()
        .watches[0]
        .polls
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_order_whose_comments_qubs_still_serves_is_cancelled_after_missed_polls() {
    // Today's simulator serves comments whatever the status, so only the polls in a row
    // without the order can tell it left.
    let consumer = Consumer::start().await;
    let addr = consumer.addr;
    let bridge = start_bridge_with(with_pending(2), &[], |s| {
        s.feed.enabled = true;
        s.feed.poll_interval_secs = 1;
        s.feed.poll_jitter = 0.0;
        s.feed.on_removed = qubs_bridge::feed::OnRemoved::Send;
        s.feed.destinations = vec![qubs_bridge::feed::DestinationSettings {
            name: "ris".into(),
            address: Some(addr.to_string()),
            ..Default::default()
        }];
    })
    .await;
    consumer.wait_accepted(2, WAIT).await;
    bridge
        .sim
        .set_appointment_status("acme", "A0002", "FINALISED");
    let from = polls(&bridge).await;
    let got = consumer.wait_accepted(3, WAIT).await;
    assert_eq!(
        (
            got[2].appointment_id.as_str(),
            got[2].order_control.as_str()
        ),
        ("A0002", "CA")
    );
    let took = polls(&bridge).await - from;
    assert!(
        took >= qubs_bridge::feed::watcher::MISSED_POLLS_BEFORE_REMOVAL as u64,
        "cancelled after {took} polls"
    );
}

#[tokio::test]
async fn a_retry_that_meets_the_first_attempt_in_progress_waits_for_it() {
    let sim = with_pending(1);
    sim.add_fault(
        FaultRule::new(Fault::SlowProcessing { ms: 1500 })
            .method("POST")
            .path("/report")
            .times(1),
    );
    let bridge = Mode::Strict
        .start_bridge(
            sim,
            &[
                ("QUBS_BRIDGE__QUBS__REQUEST_TIMEOUT_MS", "400"),
                ("QUBS_BRIDGE__QUBS__RETRY__MAX_ATTEMPTS", "1"),
                ("QUBS_BRIDGE__RESULTS__RETRY_INITIAL_MS", "50"),
                ("QUBS_BRIDGE__RESULTS__RETRY_MAX_MS", "200"),
            ],
        )
        .await;
    let answer = submit_oru(&bridge, &oru("S1", "A0001", "")).await;
    assert_eq!(answer.ack_code, "AA", "{:?}", answer.error);
    let posts: Vec<u16> = bridge
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/report"))
        .map(|r| r.status)
        .collect();
    assert!(
        posts.contains(&409),
        "a retry met the first attempt: {posts:?}"
    );
    assert_eq!(bridge.sim.submissions("acme").len(), 1);
    assert_eq!(
        answer.reports[0].report_guid,
        bridge.sim.report("acme", "A0001").unwrap().report_guid
    );
}
