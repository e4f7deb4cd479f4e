//! The service runs until it is told to stop, then stops within its grace period.

mod common;

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
