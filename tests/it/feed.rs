//! The HL7 order feed end to end: the service polls the simulator over HTTP and pushes
//! ORM^O01 over real MLLP sockets to scriptable test consumers (tests/common/consumer.rs),
//! or drops files; `WatchOrders` and `GetFeedStatus` over the real tonic client. Each
//! scenario runs against today's simulator and the strict one.

use crate::common;

use std::time::Duration;

use common::consumer::{Consumer, Reply};
use common::{GRPC_TOKEN, Mode, authed, eventually, in_both_modes, pending, with_pending};
use qubs_bridge::config::Settings;
use qubs_bridge::feed::{DestinationKind, DestinationSettings, OnRemoved, Ordering};
use qubs_bridge::grpc::pb::{self, feed_service_client::FeedServiceClient};
use qubs_bridge::simulator::{Fault, FaultRule};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

in_both_modes!(
    #[tokio::test(flavor = "multi_thread")]
    new_changed_and_removed_orders_reach_the_consumer_and_watch_orders,
    every_consumer_answer_is_handled_by_policy_and_nothing_is_lost,
    one_stuck_order_holds_back_only_its_own_key_unless_strict,
    two_destinations_one_down_the_other_keeps_flowing,
    a_restart_resumes_without_resending_and_a_baseline_sends_only_what_follows,
    a_file_destination_gets_one_complete_file_per_message,
    qubs_errors_back_off_without_losing_the_watch,
    an_mllp_destination_over_mutual_tls,
);

/// An MLLP destination with test timings: quick retries, a short ACK timeout.
fn mllp(name: &str, addr: std::net::SocketAddr) -> DestinationSettings {
    DestinationSettings {
        name: name.into(),
        address: Some(addr.to_string()),
        ack_timeout_secs: 1,
        connect_timeout_secs: 1,
        retry_initial_ms: 50,
        retry_max_ms: 200,
        ..Default::default()
    }
}

/// The feed on, polling every second, to `destinations`.
fn feed(settings: &mut Settings, destinations: Vec<DestinationSettings>) {
    settings.feed.enabled = true;
    settings.feed.poll_interval_secs = 1;
    settings.feed.poll_jitter = 0.0;
    settings.feed.retry_initial_ms = 50;
    settings.feed.retry_max_ms = 200;
    settings.feed.destinations = destinations;
}

/// Polls the async `check` every 50 ms until it holds; panics naming `what` after `WAIT`.
async fn eventually_async<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            std::time::Instant::now() < until,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(bridge: &common::Bridge) -> pb::GetFeedStatusResponse {
    FeedServiceClient::new(bridge.channel().await)
        .get_feed_status(authed(pb::GetFeedStatusRequest {}, GRPC_TOKEN))
        .await
        .expect("GetFeedStatus")
        .into_inner()
}

fn ids(received: &[common::consumer::Received]) -> Vec<(String, String)> {
    received
        .iter()
        .map(|r| (r.appointment_id.clone(), r.order_control.clone()))
        .collect()
}

/// Waits until the feed has finished `n` more polls of the first watched domain.
async fn wait_polls(bridge: &common::Bridge, n: u64) {
    let before = status(bridge).await.watches[0].polls;
    let deadline = tokio::time::Instant::now() + WAIT;
    while status(bridge).await.watches[0].polls < before + n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} more polls in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn new_changed_and_removed_orders_reach_the_consumer_and_watch_orders(mode: Mode) {
    let consumer = Consumer::start().await;
    let addr = consumer.addr;
    let bridge = mode
        .start_bridge_with(with_pending(3), &[], |s| {
            feed(s, vec![mllp("ris", addr)]);
            s.feed.on_removed = OnRemoved::Send;
        })
        .await;
    let first = consumer.wait_accepted(3, WAIT).await;
    let mut got = ids(&first);
    got.sort();
    assert_eq!(
        got,
        [("A0001", "NW"), ("A0002", "NW"), ("A0003", "NW")]
            .map(|(a, c)| (a.to_string(), c.to_string()))
    );
    for r in &first {
        assert!(
            r.text.starts_with("MSH|^~\\&|"),
            "an ORM^O01: {:?}",
            &r.text[..20]
        );
        assert!(r.text.contains("|ORM^O01"), "message type");
    }

    // A field the ORM mapping reads changes: XO.
    let mut changed = pending("A0002");
    changed["patientName"] = json!("Patient Renamed");
    bridge.sim.put_appointment("acme", changed);
    let after_change = consumer.wait_accepted(4, WAIT).await;
    assert_eq!(
        ids(&after_change[3..]),
        [("A0002".to_string(), "XO".to_string())]
    );

    // A field no mapping reads changes: nothing is sent (three more polls).
    let mut unread = pending("A0001");
    unread["bookingReference"] = json!("BR-7");
    bridge.sim.put_appointment("acme", unread);
    wait_polls(&bridge, 3).await;
    assert_eq!(
        consumer.received().len(),
        4,
        "an unread field is not a change"
    );

    // A pass over the list misses an order that is still pending (QUBS does not promise a
    // stable order across pages): it is neither cancelled nor, once listed again, new.
    bridge.sim.set_listed("acme", "A0001", false);
    wait_polls(&bridge, 2).await;
    bridge.sim.set_listed("acme", "A0001", true);
    wait_polls(&bridge, 2).await;
    assert_eq!(
        consumer.received().len(),
        4,
        "a pending order the list missed is not removed"
    );

    // An order leaves the pending list, deleted or no longer pending: CA (on_removed = send).
    bridge.sim.remove_appointment("acme", "A0003");
    let after_remove = consumer.wait_accepted(5, WAIT).await;
    assert_eq!(
        ids(&after_remove[4..]),
        [("A0003".to_string(), "CA".to_string())]
    );
    bridge
        .sim
        .set_appointment_status("acme", "A0002", "FINALISED");
    let after_remove = consumer.wait_accepted(6, WAIT).await;
    assert_eq!(
        ids(&after_remove[5..]),
        [("A0002".to_string(), "CA".to_string())]
    );

    // WatchOrders from the start replays the same six events, same messages.
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
        .expect("WatchOrders")
        .into_inner();
    let mut events = Vec::new();
    while events.len() < 6 {
        let e = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("an event in time")
            .expect("stream ok")
            .expect("stream open");
        events.push(e);
    }
    let kinds: Vec<i32> = events.iter().map(|e| e.kind).collect();
    use pb::FeedEventKind::{Changed, New, Removed};
    assert_eq!(
        kinds,
        [New, New, New, Changed, Removed, Removed]
            .map(|k| k as i32)
            .to_vec()
    );
    for (event, received) in events.iter().zip(&after_remove) {
        let orm = &event.order.as_ref().unwrap().outputs[0].content;
        assert_eq!(orm, &received.text, "WatchOrders carries the message sent");
    }
    // Resuming after the second event gives the third onwards.
    let mut resumed = FeedServiceClient::new(bridge.channel().await)
        .watch_orders(authed(
            pb::WatchOrdersRequest {
                domain: "acme".into(),
                formats: vec![pb::OutputFormat::SourceJson as i32],
                after_cursor: events[1].cursor.clone(),
            },
            GRPC_TOKEN,
        ))
        .await
        .expect("WatchOrders resumed")
        .into_inner();
    let third = resumed.message().await.unwrap().unwrap();
    assert_eq!(third.cursor, events[2].cursor);
    let source = &third.order.unwrap().outputs[0];
    assert_eq!(source.content_type, "application/json");
    assert!(source.content.contains("\"appointmentId\""));
    // Live: a new order arrives on the open stream too.
    bridge.sim.put_appointment("acme", pending("A0009"));
    let live = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a live event in time")
        .unwrap()
        .unwrap();
    assert_eq!(live.kind, New as i32);
    assert_eq!(live.order.unwrap().appointment_id, "A0009");
    assert!(live.cursor.parse::<i64>().unwrap() > events[4].cursor.parse::<i64>().unwrap());

    // Another caller's domain and a disabled format are refused clearly.
    let denied = FeedServiceClient::new(bridge.channel().await)
        .watch_orders(authed(
            pb::WatchOrdersRequest {
                domain: "globex".into(),
                ..Default::default()
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let bad_cursor = FeedServiceClient::new(bridge.channel().await)
        .watch_orders(authed(
            pb::WatchOrdersRequest {
                domain: "acme".into(),
                after_cursor: "yesterday".into(),
                ..Default::default()
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_cursor.code(), tonic::Code::InvalidArgument);
}

async fn every_consumer_answer_is_handled_by_policy_and_nothing_is_lost(mode: Mode) {
    let consumer = Consumer::start().await;
    consumer.script("A0001", &[Reply::Ack("AE")]);
    consumer.script("A0002", &[Reply::Ack("AR"), Reply::Ack("AR")]);
    consumer.script("A0003", &[Reply::Malformed]);
    consumer.script("A0004", &[Reply::WrongControlId]);
    consumer.script("A0005", &[Reply::CloseMidFrame]);
    consumer.script("A0006", &[Reply::Silent]);
    consumer.script("A0007", &[Reply::Ack("CA")]);
    let addr = consumer.addr;
    // Defaults: AE is a dead letter, AR is retried.
    let bridge = mode
        .start_bridge_with(with_pending(8), &[], |s| feed(s, vec![mllp("ris", addr)]))
        .await;
    consumer.wait_accepted(6, WAIT).await;
    eventually("every message settled", WAIT, || {
        let r = consumer.received();
        r.iter().any(|m| m.appointment_id == "A0007") && consumer.accepted().len() == 6
    })
    .await;
    let s = status(&bridge).await;
    let d = &s.destinations[0];
    assert_eq!((d.pending, d.delivered, d.dead), (0, 7, 1), "{d:?}");
    assert_eq!(d.last_ack_code, "AA");
    // The errors on the way (AE, AR, a malformed ACK, silence...) are history once a round
    // delivers cleanly: `feed status` no longer shows the last one.
    let mut d = d.clone();
    let until = std::time::Instant::now() + WAIT;
    while !d.last_error.is_empty() && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        d = status(&bridge).await.destinations[0].clone();
    }
    assert!(d.last_error.is_empty(), "{d:?}");
    assert_eq!(d.dead, 1, "the dead letter stays counted");

    let received = consumer.received();
    let of = |id: &str| {
        received
            .iter()
            .filter(|r| r.appointment_id == id)
            .collect::<Vec<_>>()
    };
    // AE: a dead letter at once, never resent.
    assert_eq!(of("A0001").len(), 1);
    // AR twice, then AA; the others once wrong, then AA. Each resend is the same message.
    let expected = [
        ("A0002", 3),
        ("A0003", 2),
        ("A0004", 2),
        ("A0005", 2),
        ("A0006", 2),
        ("A0007", 1),
        ("A0008", 1),
    ];
    for (id, n) in expected {
        let copies = of(id);
        assert_eq!(copies.len(), n, "{id}: {:?}", ids(&received));
        assert!(
            copies
                .iter()
                .all(|c| c.control_id == copies[0].control_id && c.text == copies[0].text),
            "{id}: a resend carries the same MSH-10 and content"
        );
        let accepted = copies
            .iter()
            .filter(|c| matches!(c.reply, Reply::Ack("AA") | Reply::Ack("CA")))
            .count();
        assert_eq!(accepted, 1, "{id}: accepted exactly once");
    }

    // The consumer is fixed: the dead letter goes back in the queue and is delivered.
    let mut feed = FeedServiceClient::new(bridge.channel().await);
    let unknown = feed
        .retry_feed_deliveries(authed(
            pb::RetryFeedDeliveriesRequest {
                destination: "nowhere".into(),
                domain: String::new(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let retried = feed
        .retry_feed_deliveries(authed(
            pb::RetryFeedDeliveriesRequest {
                destination: "ris".into(),
                domain: String::new(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.requeued, 1);
    consumer.wait_accepted(7, WAIT).await;
    let resent: Vec<_> = consumer
        .received()
        .into_iter()
        .filter(|r| r.appointment_id == "A0001")
        .collect();
    assert_eq!(resent.len(), 2);
    assert_eq!(
        resent[0].control_id, resent[1].control_id,
        "resent as it was"
    );
}

async fn one_stuck_order_holds_back_only_its_own_key_unless_strict(mode: Mode) {
    for (ordering, others_flow) in [(Ordering::PerPatient, true), (Ordering::Strict, false)] {
        let consumer = Consumer::start().await;
        consumer.script("A0001", &[Reply::Ack("AR"); 40]);
        let addr = consumer.addr;
        let bridge = mode
            .start_bridge_with(with_pending(4), &[], |s| {
                let mut d = mllp("ris", addr);
                d.ordering = ordering;
                feed(s, vec![d]);
            })
            .await;
        eventually("the stuck order was tried", WAIT, || {
            consumer
                .received()
                .iter()
                .filter(|r| r.appointment_id == "A0001")
                .count()
                >= 3
        })
        .await;
        if others_flow {
            consumer.wait_accepted(3, WAIT).await;
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                consumer.accepted().is_empty(),
                "strict ordering: nothing passes the stuck order"
            );
            assert_eq!(status(&bridge).await.destinations[0].pending, 4);
        }
    }
}

async fn two_destinations_one_down_the_other_keeps_flowing(mode: Mode) {
    let up = Consumer::start().await;
    // A port with nothing behind it (yet).
    let down_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let up_addr = up.addr;
    let bridge = mode
        .start_bridge_with(with_pending(5), &[], |s| {
            feed(s, vec![mllp("pacs", up_addr), mllp("ris", down_addr)]);
        })
        .await;
    up.wait_accepted(5, WAIT).await;
    let ris = loop {
        let s = status(&bridge).await;
        let ris = s
            .destinations
            .into_iter()
            .find(|d| d.name == "ris")
            .unwrap();
        if !ris.last_error.is_empty() {
            break ris;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((ris.pending, ris.delivered), (5, 0), "{ris:?}");
    assert!(
        ris.last_error.contains("connect"),
        "the error says why: {}",
        ris.last_error
    );
    assert!(!ris.last_error_at_utc.is_empty(), "and when: {ris:?}");
    // It comes up: the queue drains, in the order found.
    let late = Consumer::start_on(down_addr).await;
    let got = late.wait_accepted(5, WAIT).await;
    let mut sorted = ids(&got);
    sorted.sort();
    assert_eq!(ids(&got), sorted, "arrival order kept");
    // The old "connect failed" is cleared by the deliveries that followed.
    eventually_async("the ris error cleared", || async {
        let s = status(&bridge).await;
        let ris = s.destinations.iter().find(|d| d.name == "ris").unwrap();
        ris.last_error.is_empty() && ris.last_error_at_utc.is_empty() && ris.delivered == 5
    })
    .await;
    assert_eq!(
        up.received().len(),
        5,
        "nothing resent to the other destination"
    );
}

async fn a_restart_resumes_without_resending_and_a_baseline_sends_only_what_follows(mode: Mode) {
    let consumer = Consumer::start().await;
    let addr = consumer.addr;
    let sim = with_pending(3);
    mode.prepare(&sim);
    sim.add_client(common::CLIENT_ID, common::CLIENT_SECRET, &["acme"]);
    let running = sim.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = {
        let mut s = mode.service_settings(&running, &[], dir.path());
        feed(&mut s, vec![mllp("ris", addr)]);
        s
    };
    let run = |settings: Settings| async move {
        let stop = tokio_util::sync::CancellationToken::new();
        let service = qubs_bridge::service::start(&settings, stop.clone())
            .await
            .expect("service starts");
        (service, stop)
    };
    let (service, stop) = run(settings.clone()).await;
    consumer.wait_accepted(3, WAIT).await;
    stop.cancel();
    service.wait().await;
    // While it is down, one order arrives.
    running.put_appointment("acme", pending("A0004"));
    let (service, stop) = run(settings.clone()).await;
    let got = consumer.wait_accepted(4, WAIT).await;
    // Two more polls: nothing else comes.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(consumer.received().len(), 4, "{:?}", ids(&got));
    assert_eq!(ids(&got[3..]), [("A0004".to_string(), "NW".to_string())]);
    stop.cancel();
    service.wait().await;

    // A fresh store with first_run = baseline: the pending orders are known, not sent.
    let consumer = Consumer::start().await;
    let addr = consumer.addr;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = mode.service_settings(&running, &[], dir.path());
    feed(&mut settings, vec![mllp("ris", addr)]);
    settings.feed.first_run = qubs_bridge::feed::FirstRun::Baseline;
    let (service, stop) = run(settings).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(consumer.received().is_empty(), "a baseline sends nothing");
    running.put_appointment("acme", pending("A0005"));
    let got = consumer.wait_accepted(1, WAIT).await;
    assert_eq!(ids(&got), [("A0005".to_string(), "NW".to_string())]);
    stop.cancel();
    service.wait().await;
}

async fn a_file_destination_gets_one_complete_file_per_message(mode: Mode) {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("drop");
    let drop_dir = dir.clone();
    let bridge = mode
        .start_bridge_with(with_pending(3), &[], |s| {
            feed(
                s,
                vec![DestinationSettings {
                    name: "dictation".into(),
                    kind: DestinationKind::File,
                    directory: Some(drop_dir),
                    ..Default::default()
                }],
            );
        })
        .await;
    let files = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    // A file is in place only once renamed from its hidden temporary name.
    let complete = || {
        files()
            .into_iter()
            .filter(|f| !f.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect::<Vec<_>>()
    };
    eventually("three files", WAIT, || complete().len() >= 3).await;
    let mut delivered = 0;
    for _ in 0..100 {
        delivered = status(&bridge).await.destinations[0].delivered;
        if delivered == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivered, 3);
    let mut names = files();
    names.sort();
    assert_eq!(names.len(), 3, "no temporary file left behind: {names:?}");
    for f in &names {
        let name = f.file_name().unwrap().to_string_lossy();
        assert!(name.ends_with(".hl7") && !name.starts_with('.'), "{name}");
        let text = std::fs::read_to_string(f).unwrap();
        assert!(
            text.starts_with("MSH|") && text.contains("\rORC|NW|"),
            "{name}"
        );
    }
}

async fn qubs_errors_back_off_without_losing_the_watch(mode: Mode) {
    let sim = with_pending(3);
    // The first polls fail; then QUBS recovers.
    sim.add_fault(
        FaultRule::new(Fault::Status {
            status: 503,
            retry_after: None,
        })
        .path("appointments/pending")
        .times(30),
    );
    let consumer = Consumer::start().await;
    let addr = consumer.addr;
    let bridge = mode
        .start_bridge_with(sim, &[], |s| feed(s, vec![mllp("ris", addr)]))
        .await;
    eventually("a failed poll is reported", WAIT, || {
        bridge.service.metrics.feed.poll_failures.get() > 0
    })
    .await;
    consumer.wait_accepted(3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(consumer.received().len(), 3, "each order once");
    let s = status(&bridge).await;
    assert!(s.watches[0].baselined);
    assert_eq!(s.watches[0].last_error, "", "recovered");
}

/// A TLS consumer on the project's own MLLP listener: acknowledges each message and notes
/// the client certificate's CN.
struct TlsConsumer {
    seen: std::sync::Mutex<Vec<Option<String>>>,
}

impl qubs_bridge::mllp::Handler for TlsConsumer {
    async fn handle(
        &self,
        inbound: qubs_bridge::mllp::Inbound,
        conn: &qubs_bridge::mllp::Connection,
    ) {
        use qubs_bridge::hl7::{ack, er7};
        let qubs_bridge::mllp::Inbound::Message(bytes) = inbound else {
            return;
        };
        self.seen
            .lock()
            .unwrap()
            .push(conn.client_cn().map(str::to_string));
        let header = ack::IncomingHeader::recover(&er7::decode_bytes(&bytes));
        let reply = ack::build(&header, ack::AckCode::AA, None, &jiff::ZonedDateTime::now());
        conn.reply(reply.into_bytes()).await.unwrap();
    }
}

async fn an_mllp_destination_over_mutual_tls(mode: Mode) {
    let pki = common::pki::Pki::new();
    let consumer = std::sync::Arc::new(TlsConsumer {
        seen: Default::default(),
    });
    let server = qubs_bridge::mllp::start(
        &qubs_bridge::mllp::MllpServerSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: Some(pki.server_tls(true)),
            ..Default::default()
        },
        consumer.clone(),
        std::sync::Arc::new(qubs_bridge::mllp::MllpMetrics::default()),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    let (cert, key) = pki.issue_files("bridge", "qubs-bridge-feed", &[]);
    let ca = pki.ca_file();
    let addr = server.addr;
    let bridge = mode
        .start_bridge_with(with_pending(2), &[], |s| {
            let mut d = mllp("pacs", addr);
            d.address = Some(format!("localhost:{}", addr.port()));
            d.tls = Some(qubs_bridge::feed::DestinationTls {
                ca_file: ca,
                server_name: None,
                cert_file: Some(cert),
                key_file: Some(key),
            });
            feed(s, vec![d]);
        })
        .await;
    eventually("two messages over TLS", WAIT, || {
        consumer.seen.lock().unwrap().len() >= 2
    })
    .await;
    assert!(
        consumer
            .seen
            .lock()
            .unwrap()
            .iter()
            .all(|cn| cn.as_deref() == Some("qubs-bridge-feed")),
        "the bridge presented its client certificate"
    );
    let mut delivered = 0;
    for _ in 0..100 {
        delivered = status(&bridge).await.destinations[0].delivered;
        if delivered == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivered, 2);
}
