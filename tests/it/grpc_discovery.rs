//! How clients find and watch the API without its .proto files: server reflection in both
//! versions, tried with a foreign client (Python's grpcio with grpcio-reflection, which
//! speaks only `grpc.reflection.v1alpha`, and no generated code), and `grpc.health.v1`
//! `Watch` following the bridge's serving status as it changes.

use crate::common;

use std::time::Duration;

use common::{GRPC_TOKEN, pending, start_bridge};
use qubs_bridge::simulator::{Fault, FaultRule, Simulator};
use serde_json::{Value, json};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

#[tokio::test]
async fn a_python_client_finds_and_calls_the_api_by_reflection_alone() {
    let sim = Simulator::new();
    sim.add_site("acme", "Main", "Australia/Sydney");
    sim.put_appointment("acme", pending("A100001"));
    let bridge = start_bridge(sim, &[]).await;
    let target = bridge.service.grpc_addr.to_string();
    // The client blocks on its calls: keep it off the runtime's threads.
    let found = tokio::task::spawn_blocking(move || {
        common::python::run(
            "reflection_client.py",
            &[
                &target,
                GRPC_TOKEN,
                "acme",
                "A100001",
                "tests/data/demo-oru-A100001.hl7",
            ],
        )
    })
    .await
    .unwrap();
    let found: Value = serde_json::from_str(&found).unwrap();

    assert_eq!(
        found["services"],
        json!([
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "qubs_bridge.v1.FeedService",
            "qubs_bridge.v1.MappingService",
            "qubs_bridge.v1.OrderService",
            "qubs_bridge.v1.OutboxService",
            "qubs_bridge.v1.ResultService",
        ])
    );
    let order = &found["get_order"]["order"];
    assert_eq!(order["appointment_id"], "A100001");
    assert_eq!(order["outputs"][0]["format"], "OUTPUT_FORMAT_HL7_ORM_O01");
    assert!(
        order["outputs"][0]["content"]
            .as_str()
            .unwrap()
            .starts_with("MSH|^~\\&|"),
        "{order}"
    );
    let request: Value =
        serde_json::from_str(order["outputs"][1]["content"].as_str().unwrap()).unwrap();
    assert_eq!(request["resourceType"], "ServiceRequest");
    // Reflection opens the door, not the API: a call without the token is refused.
    assert_eq!(found["get_order_without_token"], "UNAUTHENTICATED");

    let submitted = &found["submit_oru"];
    assert_eq!(submitted["ack_code"], "AA", "{submitted}");
    assert!(
        submitted["ack"]
            .as_str()
            .unwrap()
            .contains("\rMSA|AA|DEMO0001"),
        "{submitted}"
    );
    assert_eq!(submitted["reports"][0]["appointment_id"], "A100001");
    let stored = bridge.sim.report("acme", "A100001").expect("QUBS has it");
    assert_eq!(
        submitted["reports"][0]["report_guid"].as_str(),
        Some(stored.report_guid.as_str())
    );

    assert_eq!(found["health_check"], "SERVING");
    assert_eq!(found["health_watch_first"], "SERVING");
}

/// The next status a Watch stream sends, within `limit`.
async fn next_status(
    stream: &mut tonic::Streaming<HealthCheckResponse>,
    limit: Duration,
) -> Option<ServingStatus> {
    let message = tokio::time::timeout(limit, stream.message())
        .await
        .expect("a status change in time")
        .expect("the watch stream stays healthy")?;
    Some(message.status())
}

#[tokio::test]
async fn health_watch_follows_the_serving_status() {
    let sim = Simulator::new();
    sim.add_site("acme", "Main", "Australia/Sydney");
    sim.put_appointment("acme", pending("A0001"));
    let bridge = start_bridge(
        sim,
        &[("QUBS_BRIDGE__SERVER__QUBS_PROBE_INTERVAL_SECS", "1")],
    )
    .await;
    let mut health = HealthClient::new(bridge.channel().await);
    let watch = |service: &str| {
        let mut health = health.clone();
        let service = service.to_string();
        async move {
            health
                .watch(HealthCheckRequest { service })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mut whole = watch("").await;
    let mut orders = watch("qubs_bridge.v1.OrderService").await;
    let limit = Duration::from_secs(20);
    assert_eq!(
        next_status(&mut whole, limit).await,
        Some(ServingStatus::Serving)
    );
    assert_eq!(
        next_status(&mut orders, limit).await,
        Some(ServingStatus::Serving)
    );

    // QUBS starts refusing the bridge's credentials: engines watching learn at once.
    bridge.sim.add_fault(
        FaultRule::new(Fault::Status {
            status: 401,
            retry_after: None,
        })
        .path("/oauth2/token"),
    );
    bridge.sim.rotate_signing_key();
    assert_eq!(
        next_status(&mut whole, limit).await,
        Some(ServingStatus::NotServing)
    );
    assert_eq!(
        next_status(&mut orders, limit).await,
        Some(ServingStatus::NotServing)
    );
    // Check agrees.
    let checked = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(checked, ServingStatus::NotServing);

    // Credentials accepted again: back to SERVING on the same streams.
    bridge.sim.clear_faults();
    assert_eq!(
        next_status(&mut whole, limit).await,
        Some(ServingStatus::Serving)
    );
    assert_eq!(
        next_status(&mut orders, limit).await,
        Some(ServingStatus::Serving)
    );

    // An unknown service is refused.
    let unknown = health
        .watch(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // Shutting down: watchers are told NOT_SERVING, their streams end, and open watches do
    // not hold the shutdown up.
    let started = std::time::Instant::now();
    bridge.shutdown.cancel();
    assert_eq!(
        next_status(&mut whole, limit).await,
        Some(ServingStatus::NotServing)
    );
    assert_eq!(
        next_status(&mut whole, limit).await,
        None,
        "the stream ends"
    );
    let common::Bridge { service, .. } = bridge;
    service.wait().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?} with a Watch open",
        started.elapsed()
    );
}
