//! Analysts edit mapping files and the running service picks the change up without a
//! restart; a broken edit keeps the last good set serving.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{GRPC_TOKEN, authed, start_bridge, with_pending};
use qubs_bridge::grpc::pb::order_service_client::OrderServiceClient;
use qubs_bridge::grpc::pb::{GetOrderRequest, Order, OutputFormat};
use serde_json::Value;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

async fn get(bridge: &common::Bridge, formats: &[OutputFormat]) -> Order {
    OrderServiceClient::new(bridge.channel().await)
        .get_order(authed(
            GetOrderRequest {
                domain: "acme".into(),
                appointment_id: "A0001".into(),
                formats: formats.iter().map(|f| *f as i32).collect(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap()
}

/// Waits until an order is rendered by a mapping set other than `old`.
async fn wait_for_new_version(
    bridge: &common::Bridge,
    old: &str,
    formats: &[OutputFormat],
) -> Order {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let order = get(bridge, formats).await;
        if order.mapping_set_version != old {
            return order;
        }
        if Instant::now() > deadline {
            let ready = bridge.admin_text("/readyz").await;
            panic!("the edit was never picked up: {ready}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn editing_the_priority_table_and_adding_an_nte_rule_take_effect_live() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("mappings"), dir.path());
    let sim = with_pending(1);
    let mut appointment = common::pending("A0001");
    appointment["priority"] = "Semi-urgent".into();
    appointment["patientId"] = "P1".into();
    appointment["appointmentDate"] = "2026-11-27".into();
    sim.put_appointment("acme", appointment);
    sim.add_comment(
        "acme",
        "A0001",
        serde_json::json!({"guid": "c1", "commentType": "AC", "commentText": "bring prior films"}),
    );
    let dir_str = dir.path().to_str().unwrap().to_string();
    let bridge = start_bridge(sim, &[("QUBS_BRIDGE__MAPPINGS__DIR", &dir_str)]).await;

    let formats = [OutputFormat::FhirServiceRequest, OutputFormat::Hl7OrmO01];
    let before = get(&bridge, &formats).await;
    let sr: Value = serde_json::from_str(&before.outputs[0].content).unwrap();
    assert_eq!(
        sr["priority"], "routine",
        "unmapped free text falls back to the default"
    );
    assert!(before.warnings.iter().any(|w| w.code == "unmapped_value"));
    assert!(!before.outputs[1].content.contains("Scheduled at"));

    // 1. The analyst adds the site's wording to the priority table.
    let table = dir.path().join("tables/priority.yaml");
    let text = std::fs::read_to_string(&table).unwrap();
    std::fs::write(
        &table,
        text.replace("  stat: stat\n", "  stat: stat\n  semi-urgent: urgent\n"),
    )
    .unwrap();
    let after = wait_for_new_version(&bridge, &before.mapping_set_version, &formats).await;
    let sr: Value = serde_json::from_str(&after.outputs[0].content).unwrap();
    assert_eq!(sr["priority"], "urgent");
    assert!(after.warnings.is_empty(), "{:?}", after.warnings);

    // 2. A broken edit: the last good set keeps serving, /readyz and the metric say so.
    let orm = dir.path().join("orm_o01.yaml");
    let good_orm = std::fs::read_to_string(&orm).unwrap();
    std::fs::write(&orm, good_orm.replace("target: NTE-2", "target: NTE-99")).unwrap();
    let admin = format!("http://{}", bridge.service.admin_addr);
    let deadline = Instant::now() + Duration::from_secs(15);
    let error = loop {
        let ready: Value = reqwest::get(format!("{admin}/readyz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(e) = ready["mappings"]["reloadError"].as_str() {
            break e.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the broken edit was never noticed: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        error.contains("orm_o01.yaml:") && error.contains("NTE-99"),
        "{error}"
    );
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("qubs_bridge_mapping_reload_failing 1\n"),
        "{metrics}"
    );
    let still = get(&bridge, &formats).await;
    assert_eq!(
        still.mapping_set_version, after.mapping_set_version,
        "last good set kept"
    );

    // 3. The analyst fixes it and adds an NTE rule: the scheduled site as a note.
    let with_nte = good_orm.clone()
        + "\n  # Added live by the test.\n  - segment: NTE\n    rules:\n      - target: NTE-2\n        value: L\n      - target: NTE-3\n        template: \"Scheduled at {appointment.scheduledSite}\"\n";
    std::fs::write(&orm, &with_nte).unwrap();
    let fixed = wait_for_new_version(&bridge, &after.mapping_set_version, &formats).await;
    assert!(
        fixed.outputs[1]
            .content
            .contains("\rNTE||L|Scheduled at Main"),
        "{}",
        fixed.outputs[1].content
    );
    let ready: Value = reqwest::get(format!("{admin}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ready["mappings"]["reloadError"].is_null());
}

#[tokio::test]
async fn a_mapping_set_broken_at_start_refuses_or_waits_not_serving() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("mappings"), dir.path());
    let sr = dir.path().join("service_request.yaml");
    let good = std::fs::read_to_string(&sr).unwrap();
    std::fs::write(&sr, good.replace("target: intent", "target: intnet")).unwrap();
    let dir_str = dir.path().to_str().unwrap().to_string();

    // Default: refuse to start, naming the file and position.
    let sim = qubs_bridge::simulator::Simulator::new();
    sim.add_client(common::CLIENT_ID, common::CLIENT_SECRET, &["acme"]);
    let running = sim.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let outbox_dir = tempfile::tempdir().unwrap();
    let settings = common::service_settings(
        &running,
        &[("QUBS_BRIDGE__MAPPINGS__DIR", &dir_str)],
        outbox_dir.path(),
    );
    let e = qubs_bridge::service::start(&settings, Default::default())
        .await
        .err()
        .unwrap();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("service_request.yaml:") && msg.contains("intnet"),
        "{msg}"
    );

    // `wait`: serve NOT_SERVING until the files are fixed.
    let bridge = start_bridge(
        with_pending(1),
        &[
            ("QUBS_BRIDGE__MAPPINGS__DIR", &dir_str),
            ("QUBS_BRIDGE__MAPPINGS__ON_BROKEN_AT_START", "wait"),
        ],
    )
    .await;
    let mut health = HealthClient::new(bridge.channel().await);
    let status = |h: &mut HealthClient<tonic::transport::Channel>| {
        let mut h = h.clone();
        async move {
            h.check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status()
        }
    };
    assert_eq!(status(&mut health).await, ServingStatus::NotServing);
    std::fs::write(&sr, &good).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(&mut health).await != ServingStatus::Serving {
        assert!(Instant::now() < deadline, "health never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
