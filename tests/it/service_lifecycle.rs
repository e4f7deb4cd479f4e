//! The service runs until it is told to stop, then stops within its grace period.

use crate::common;

use std::time::Duration;

use common::{start_bridge, with_pending};

#[tokio::test]
async fn the_service_outlives_its_grace_period_and_stops_on_shutdown() {
    let bridge = start_bridge(
        with_pending(1),
        &[("QUBS_BRIDGE__SERVER__SHUTDOWN_GRACE_SECS", "1")],
    )
    .await;
    let shutdown = bridge.shutdown.clone();
    let admin = bridge.service.admin_addr;
    let waiting = tokio::spawn(bridge.service.wait());
    // Well past the grace period: still running and serving.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!waiting.is_finished(), "the service stopped on its own");
    let health = reqwest::get(format!("http://{admin}/healthz"))
        .await
        .unwrap();
    assert!(health.status().is_success());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("stops within the grace period")
        .unwrap();
}

#[tokio::test]
async fn open_client_connections_do_not_hold_up_shutdown() {
    use qubs_bridge::grpc::pb::order_service_client::OrderServiceClient;
    let bridge = start_bridge(
        with_pending(1),
        &[("QUBS_BRIDGE__SERVER__SHUTDOWN_GRACE_SECS", "30")],
    )
    .await;
    let shutdown = bridge.shutdown.clone();
    // A metrics scraper keeping its HTTP/1.1 connection alive, and an engine's idle
    // HTTP/2 channel after one call.
    let scraper = reqwest::Client::new();
    let metrics = scraper
        .get(format!("http://{}/metrics", bridge.service.admin_addr))
        .send()
        .await
        .unwrap();
    assert!(metrics.status().is_success());
    metrics.text().await.unwrap();
    let mut engine = OrderServiceClient::new(bridge.channel().await);
    engine
        .list_pending_orders(common::authed(
            qubs_bridge::grpc::pb::ListPendingOrdersRequest {
                domain: "acme".into(),
                ..Default::default()
            },
            common::GRPC_TOKEN,
        ))
        .await
        .unwrap();
    let waiting = tokio::spawn(bridge.service.wait());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("stops without waiting out the 30 s grace period")
        .unwrap();
    drop((scraper, engine));
}
