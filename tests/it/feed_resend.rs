//! Re-sending after a mapping change: the running service polls the simulator, pushes
//! ORM^O01 to a real MLLP consumer, and an analyst edits a copy of the shipped mapping
//! files. With `on_mapping_change = "resend_changed"` only the orders whose message the
//! edit changed are sent again, as XO; by hand, `qubs-bridge feed resend` (the real binary
//! over gRPC) shows what would change and sends it.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::consumer::{Consumer, Received};
use common::{GRPC_TOKEN, authed, pending, start_bridge_with, with_pending};
use qubs_bridge::feed::{DestinationSettings, OnMappingChange};
use qubs_bridge::grpc::pb::{self, feed_service_client::FeedServiceClient};
use qubs_bridge::mapping::golden::diff;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

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

/// Three pending orders; only A0002 has a priority, in the site's own wording, which the
/// shipped priority table does not know (so it goes out as routine, `R`).
fn three_orders() -> qubs_bridge::simulator::Simulator {
    let sim = with_pending(3);
    let mut urgent = pending("A0002");
    urgent["priority"] = "Semi-urgent".into();
    sim.put_appointment("acme", urgent);
    sim
}

/// The analyst maps the site's wording: A0002's ORC-7.6/OBR-27.6 becomes `A`.
fn map_semi_urgent(mappings: &Path) {
    let table = mappings.join("tables/priority.yaml");
    let text = std::fs::read_to_string(&table).unwrap();
    assert!(text.contains("  stat: stat\n"));
    std::fs::write(
        &table,
        text.replace("  stat: stat\n", "  stat: stat\n  semi-urgent: urgent\n"),
    )
    .unwrap();
}

/// Starts the bridge on a copy of the shipped mappings, feeding one MLLP consumer.
async fn start(
    mappings: &Path,
    consumer: &Consumer,
    on_mapping_change: OnMappingChange,
) -> common::Bridge {
    let (dir, addr) = (mappings.to_path_buf(), consumer.addr);
    start_bridge_with(three_orders(), &[], move |s| {
        s.mappings.dir = dir;
        // A value no shipped mapping reads (yet).
        s.mappings
            .values
            .insert("facility".into(), "Main Campus".into());
        s.feed.enabled = true;
        s.feed.poll_interval_secs = 1;
        s.feed.poll_jitter = 0.0;
        s.feed.on_mapping_change = on_mapping_change;
        s.feed.destinations = vec![DestinationSettings {
            name: "ris".into(),
            address: Some(addr.to_string()),
            ack_timeout_secs: 1,
            connect_timeout_secs: 1,
            retry_initial_ms: 50,
            retry_max_ms: 200,
            ..Default::default()
        }];
    })
    .await
}

async fn mapping_version(bridge: &common::Bridge) -> String {
    let ready: Value = serde_json::from_str(&bridge.admin_text("/readyz").await).unwrap();
    ready["mappings"]["version"].as_str().unwrap().to_string()
}

/// Waits until the service serves a mapping set other than `old`; returns its version.
async fn wait_for_reload(bridge: &common::Bridge, old: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = mapping_version(bridge).await;
        if now != old {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mapping edit was never picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the feed has finished `n` more polls of `acme`.
async fn wait_polls(bridge: &common::Bridge, n: u64) {
    let polls = || async {
        FeedServiceClient::new(bridge.channel().await)
            .get_feed_status(authed(pb::GetFeedStatusRequest {}, GRPC_TOKEN))
            .await
            .unwrap()
            .into_inner()
            .watches[0]
            .polls
    };
    let before = polls().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while polls().await < before + n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} more polls in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sent(received: &[Received]) -> Vec<(String, String)> {
    received
        .iter()
        .map(|r| (r.appointment_id.clone(), r.order_control.clone()))
        .collect()
}

fn message_of<'a>(received: &'a [Received], appointment_id: &str) -> &'a str {
    &received
        .iter()
        .find(|r| r.appointment_id == appointment_id)
        .unwrap()
        .text
}

/// The field-level differences between two messages, as `path: before → after`.
fn changes(before: &str, after: &str) -> Vec<String> {
    diff::hl7(before, after)
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mapping_change_resends_only_the_orders_whose_message_changed_as_xo() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("mappings"), dir.path());
    let consumer = Consumer::start().await;
    let bridge = start(dir.path(), &consumer, OnMappingChange::ResendChanged).await;
    let first = consumer.wait_accepted(3, WAIT).await;
    let mut got = sent(&first);
    got.sort();
    assert_eq!(
        got,
        [("A0001", "NW"), ("A0002", "NW"), ("A0003", "NW")]
            .map(|(a, c)| (a.to_string(), c.to_string()))
    );
    let v1 = mapping_version(&bridge).await;

    // An edit that changes no message (a comment): a new version, nothing sent.
    let orm = dir.path().join("orm_o01.yaml");
    let text = std::fs::read_to_string(&orm).unwrap();
    std::fs::write(&orm, format!("{text}\n# reviewed with the RIS team\n")).unwrap();
    let v2 = wait_for_reload(&bridge, &v1).await;
    wait_polls(&bridge, 3).await;
    assert_eq!(
        consumer.received().len(),
        3,
        "a mapping change that alters no message sends nothing"
    );

    // The analyst maps the site's wording for A0002's priority: only A0002 is sent again,
    // as XO, and its message differs from the first in ORC-1 and the priority only.
    map_semi_urgent(dir.path());
    wait_for_reload(&bridge, &v2).await;
    let after = consumer.wait_accepted(4, WAIT).await;
    assert_eq!(sent(&after[3..]), [("A0002".to_string(), "XO".to_string())]);
    let before = message_of(&first, "A0002");
    let resent = &after[3];
    assert_ne!(
        resent.control_id,
        first
            .iter()
            .find(|r| r.appointment_id == "A0002")
            .unwrap()
            .control_id,
        "a new message, with its own MSH-10"
    );
    assert_eq!(
        changes(before, &resent.text),
        ["ORC-1: NW → XO", "ORC-7.6: R → A", "OBR-27.6: R → A"]
    );
    wait_polls(&bridge, 3).await;
    assert_eq!(
        consumer.received().len(),
        4,
        "unchanged orders are not sent at all, and A0002 only once"
    );

    // The resend is an event like any other: WatchOrders replays it after the three NWs,
    // with the message the consumer received.
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
    let mut events = Vec::new();
    while events.len() < 4 {
        let e = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("an event in time")
            .unwrap()
            .unwrap();
        events.push(e);
    }
    let last = &events[3];
    assert_eq!(last.kind, pb::FeedEventKind::Changed as i32);
    let order = last.order.as_ref().unwrap();
    assert_eq!(order.appointment_id, "A0002");
    assert_eq!(order.outputs[0].content, resent.text);
}

/// Runs the real binary's `feed` command against the bridge; (success, stdout, stderr).
async fn cli(bridge: &common::Bridge, args: &[&str]) -> (bool, String, String) {
    let mut command = crate::cli::bridge();
    command
        .arg("feed")
        .args(args)
        .env("QUBS_BRIDGE_SERVER", bridge.grpc_url())
        .env("QUBS_BRIDGE_TOKEN", GRPC_TOKEN);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn feed_resend_by_hand_shows_a_dry_run_then_sends_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("mappings"), dir.path());
    let consumer = Consumer::start().await;
    let bridge = start(dir.path(), &consumer, OnMappingChange::Ignore).await;
    let first = consumer.wait_accepted(3, WAIT).await;
    let v1 = mapping_version(&bridge).await;

    // on_mapping_change = ignore: the edit alone sends nothing.
    map_semi_urgent(dir.path());
    let v2 = wait_for_reload(&bridge, &v1).await;
    wait_polls(&bridge, 3).await;
    assert_eq!(consumer.received().len(), 3, "ignore sends nothing");

    // The dry run counts and shows one order's differences, and sends nothing.
    let (ok, out, err) = cli(
        &bridge,
        &[
            "resend",
            "--domain",
            "acme",
            "--changed-by-mapping",
            "--dry-run",
            "--format",
            "json",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let dry: Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(dry["mappingSetVersion"], v2.as_str());
    assert_eq!(
        (&dry["tracked"], &dry["changed"], &dry["unchanged"]),
        (&3.into(), &1.into(), &2.into())
    );
    assert_eq!(
        (&dry["resent"], &dry["wouldResend"]),
        (&0.into(), &1.into())
    );
    assert_eq!(dry["example"]["appointmentId"], "A0002");
    let fields: Vec<&str> = dry["example"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["ORC-7.6", "OBR-27.6"],
        "the same kind (NW) compared: only the priority differs"
    );
    assert_eq!(dry["example"]["changes"][0]["before"], "R");
    assert_eq!(dry["example"]["changes"][0]["after"], "A");

    let (ok, out, err) = cli(
        &bridge,
        &[
            "resend",
            "--domain",
            "acme",
            "--changed-by-mapping",
            "--dry-run",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("3 tracked order(s) of acme against mapping set")
            && out.contains("1 changed, 2 unchanged"),
        "{out}"
    );
    assert!(
        out.contains("dry run: 1 order(s) would be sent again as XO; nothing was sent"),
        "{out}"
    );
    assert!(out.contains("A0002 (last sent → now):"), "{out}");
    assert!(out.contains("  ORC-7.6: R → A\n"), "{out}");
    wait_polls(&bridge, 2).await;
    assert_eq!(consumer.received().len(), 3, "a dry run sends nothing");

    // The real run: A0002 goes out as XO, the others not at all.
    let (ok, out, err) = cli(
        &bridge,
        &["resend", "--domain", "acme", "--changed-by-mapping"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("1 order(s) queued to be sent again as XO"),
        "{out}"
    );
    let after = consumer.wait_accepted(4, WAIT).await;
    assert_eq!(sent(&after[3..]), [("A0002".to_string(), "XO".to_string())]);
    assert_eq!(
        changes(message_of(&first, "A0002"), &after[3].text),
        ["ORC-1: NW → XO", "ORC-7.6: R → A", "OBR-27.6: R → A"]
    );

    // What the consumer has is now the new message: nothing left to send.
    let (ok, out, _) = cli(
        &bridge,
        &[
            "resend",
            "--domain",
            "acme",
            "--changed-by-mapping",
            "--format",
            "json",
        ],
    )
    .await;
    assert!(ok);
    let again: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&again["changed"], &again["unchanged"], &again["resent"]),
        (&0.into(), &3.into(), &0.into())
    );
    assert!(again["example"].is_null());

    // Without --changed-by-mapping, the order asked for is sent again as it is now.
    let (ok, out, err) = cli(
        &bridge,
        &[
            "resend",
            "--domain",
            "acme",
            "--appointment",
            "A0001",
            "--format",
            "json",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let one: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&one["tracked"], &one["resent"]), (&1.into(), &1.into()));
    let after = consumer.wait_accepted(5, WAIT).await;
    assert_eq!(sent(&after[4..]), [("A0001".to_string(), "XO".to_string())]);
    assert_eq!(
        changes(message_of(&first, "A0001"), &after[4].text),
        ["ORC-1: NW → XO"]
    );

    // An order the feed does not track, and a domain the caller may not use.
    let (ok, _, err) = cli(
        &bridge,
        &["resend", "--domain", "acme", "--appointment", "A0404"],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("domain `acme` has no tracked order `A0404`"),
        "{err}"
    );
    let (ok, _, err) = cli(&bridge, &["resend", "--domain", "globex", "--dry-run"]).await;
    assert!(!ok);
    assert!(err.contains("globex"), "{err}");
    assert_eq!(consumer.received().len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mappings_reading_another_field_is_not_a_change_of_every_order() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("mappings"), dir.path());
    let consumer = Consumer::start().await;
    let bridge = start(dir.path(), &consumer, OnMappingChange::Ignore).await;
    consumer.wait_accepted(3, WAIT).await;
    let v1 = mapping_version(&bridge).await;

    // The analyst sends a configured facility name in PV1-3.4: the order mappings now read
    // a field they did not, so every order's fingerprint changes without QUBS changing it.
    let before = qubs_bridge::mapping::MappingSet::load_dir(dir.path()).unwrap();
    let orm = dir.path().join("orm_o01.yaml");
    let text = std::fs::read_to_string(&orm).unwrap();
    let edited = text.replacen(
        "      - target: PV1-2\n        value: O\n",
        "      - target: PV1-2\n        value: O\n      - target: PV1-3.4\n        from: config.facility\n",
        1,
    );
    assert_ne!(edited, text);
    std::fs::write(&orm, edited).unwrap();
    let after = qubs_bridge::mapping::MappingSet::load_dir(dir.path()).unwrap();
    let order = serde_json::json!({
        "domain": "acme",
        "appointment": pending("A0001"),
        "site": {"siteName": "Main", "timeZone": "Australia/Sydney"},
        "config": {"facility": "Main Campus"},
    });
    assert_ne!(
        before.order_fingerprint(&order),
        after.order_fingerprint(&order),
        "the edit makes the mappings read another field"
    );

    // With on_mapping_change = ignore, the polls that follow send nothing...
    wait_for_reload(&bridge, &v1).await;
    wait_polls(&bridge, 3).await;
    assert_eq!(
        consumer.received().len(),
        3,
        "a new read is not a change of the orders"
    );
    // ...though every message would now differ, as a dry run shows.
    let (ok, out, err) = cli(
        &bridge,
        &[
            "resend",
            "--domain",
            "acme",
            "--changed-by-mapping",
            "--dry-run",
            "--format",
            "json",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let dry: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&dry["changed"], &dry["unchanged"]), (&3.into(), &0.into()));
    assert_eq!(dry["example"]["changes"][0]["field"], "PV1-3.4");
    assert_eq!(dry["example"]["changes"][0]["after"], "Main Campus");

    // A real change to an order is still one.
    let mut renamed = pending("A0003");
    renamed["patientName"] = "Patient Renamed".into();
    bridge.sim.put_appointment("acme", renamed);
    let got = consumer.wait_accepted(4, WAIT).await;
    assert_eq!(sent(&got[3..]), [("A0003".to_string(), "XO".to_string())]);
}
