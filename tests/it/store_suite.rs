//! The outbox's, the feed's and the console's storage behaviour: the same tests on both
//! backends, the
//! embedded SQLite file and a real PostgreSQL (see `common::postgres`). Then what only
//! PostgreSQL has: two handles on one database behave as two replicas (claims, leases,
//! fencing, notifications, commit-ordered events), migrations, TLS and `store copy`.

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use qubs_bridge::console::audit::{AuditLog, Change};
use qubs_bridge::console::history::{History, NewVersion, Recorded};
use qubs_bridge::feed::{
    Baseline, DestinationSettings, EventKind, Feed, FeedSettings, NewEvent, Ordering, Outcome,
};
use qubs_bridge::outbox::{
    Admission, Attachment, Due, EntryFilter, NewMessage, NewResult, Outbox, Settled, State, Stats,
};
use qubs_bridge::service::SCHEMA;
use qubs_bridge::store::{Database, Signal, StoreError, StoreMetrics, StoreSettings};

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A store of one test's own, and what keeps it alive.
struct Fixture {
    settings: StoreSettings,
    _dir: tempfile::TempDir,
    _db: Option<common::postgres::TestDb>,
}

impl Fixture {
    async fn new(backend: Backend, lease_secs: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => Fixture {
                settings: StoreSettings {
                    path: dir.path().join("bridge.db"),
                    ..Default::default()
                },
                _dir: dir,
                _db: None,
            },
            Backend::Postgres => {
                let db = common::postgres::server().database().await;
                db.migrate().await;
                Fixture {
                    settings: db.settings(lease_secs),
                    _dir: dir,
                    _db: Some(db),
                }
            }
        }
    }

    /// A handle on the store, as one replica has it.
    async fn open(&self) -> Database {
        Database::open(&self.settings, &SCHEMA, Arc::new(StoreMetrics::default()))
            .await
            .expect("the store opens")
    }

    async fn outbox(&self) -> (Database, Arc<Outbox>) {
        let db = self.open().await;
        let outbox = Outbox::new(&db, Arc::new(StoreMetrics::default()));
        (db, outbox)
    }
}

/// Runs a test on both backends: `<name>::sqlite` and `<name>::postgres`.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    };
}

fn result(key: &str, appointment: &str, status: &str) -> NewResult {
    NewResult {
        key: key.into(),
        domain: "acme".into(),
        appointment_id: appointment.into(),
        group: 0,
        report_status: status.into(),
        attachments: vec![Attachment {
            file_name: "r.pdf".into(),
            content_type: "application/pdf".into(),
            content: b"%PDF-1.4".to_vec(),
        }],
    }
}

fn message(results: Vec<NewResult>) -> NewMessage {
    NewMessage {
        source: qubs_bridge::outbox::Source::Hl7,
        source_id: "MSG1".into(),
        body: b"MSH|...".to_vec(),
        results,
        awaited: true,
    }
}

fn stored(a: Admission) -> Vec<i64> {
    match a {
        Admission::Stored { ids } => ids,
        other => panic!("expected Stored, got {other:?}"),
    }
}

fn submitted() -> Settled {
    Settled::Submitted(qubs_bridge::outbox::Receipt {
        report_guid: "g".into(),
        report_status: Some("final".into()),
        reported_at_utc: None,
    })
}

fn ids(d: &[Due]) -> Vec<i64> {
    d.iter().map(|d| d.entry.id).collect()
}

// ---------------------------------------------------------------------------------------
// The outbox, on both backends.

both!(retransmissions_are_recognised_and_survive_a_restart);
async fn retransmissions_are_recognised_and_survive_a_restart(backend: Backend) {
    let f = Fixture::new(backend, 30).await;
    let (db, outbox) = f.outbox().await;
    let two = || {
        message(vec![
            result("k1", "A1", "final"),
            result("k2", "A2", "final"),
        ])
    };
    let ids = stored(outbox.admit(two()).await.unwrap());
    assert_eq!(ids.len(), 2);
    assert_eq!(
        outbox.admit(two()).await.unwrap(),
        Admission::Duplicate { ids: ids.clone() }
    );
    drop(outbox);
    drop(db);
    // Give the SQLite writer thread a moment to close the file.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_db, outbox) = f.outbox().await;
    let stats = outbox.stats(true).await.unwrap();
    assert_eq!((stats.pending, stats.submitted), (2, Some(0)));
    let due = outbox.claim(10).await.unwrap();
    assert_eq!(ids_of(&due), ids);
    assert_eq!(due[0].attachments.len(), 1);
    assert_eq!(due[0].attachments[0].content, b"%PDF-1.4");
    assert_eq!(due[0].body, b"MSH|...");
    assert_eq!(due[0].entry.attachments, 1);
}

both!(admissions_at_the_same_moment_keep_their_one_by_one_meaning);
/// Many admissions at once (on PostgreSQL they share transactions): each gets the outcome
/// it would have had alone, in the order they were made, and one the database refuses
/// takes no other with it.
async fn admissions_at_the_same_moment_keep_their_one_by_one_meaning(backend: Backend) {
    let f = Fixture::new(backend, 30).await;
    let (_db, outbox) = f.outbox().await;
    let mut refused = message(vec![result("k-bad", "A-bad", "final")]);
    // Text with a NUL byte: PostgreSQL refuses it; SQLite stores it.
    refused.results[0].domain = "ac\0me".into();
    let mut two_results = message(vec![
        result("k-two-1", "A20", "final"),
        result("k-two-2", "A21", "final"),
    ]);
    two_results.results[1].attachments.clear();
    let batch = [
        message(vec![result("k-first", "A1", "final")]),
        // Its retransmission, at the same moment.
        message(vec![result("k-first", "A1", "final")]),
        message(vec![result("k-final", "A2", "final")]),
        // A preliminary after the final just before it.
        message(vec![result("k-prelim", "A2", "preliminary")]),
        refused,
        two_results,
    ];
    let mut outcomes = Vec::new();
    for round in 0..3 {
        let batch: Vec<_> = batch
            .iter()
            .cloned()
            .map(|mut m| {
                for r in &mut m.results {
                    r.key = format!("{}-{round}", r.key);
                    r.appointment_id = format!("{}-{round}", r.appointment_id);
                }
                m
            })
            .collect();
        outcomes.push(futures::future::join_all(batch.into_iter().map(|m| outbox.admit(m))).await);
    }
    for round in outcomes {
        let first = stored(round[0].as_ref().unwrap().clone());
        assert_eq!(
            round[1].as_ref().unwrap(),
            &Admission::Duplicate { ids: first.clone() }
        );
        let final_id = stored(round[2].as_ref().unwrap().clone());
        assert_eq!(
            round[3].as_ref().unwrap(),
            &Admission::PreliminaryAfterFinal {
                index: 0,
                final_id: final_id[0]
            }
        );
        match backend {
            Backend::Postgres => assert!(round[4].is_err(), "{:?}", round[4]),
            Backend::Sqlite => assert_eq!(stored(round[4].as_ref().unwrap().clone()).len(), 1),
        }
        let two = stored(round[5].as_ref().unwrap().clone());
        assert_eq!(two.len(), 2);
        assert!(first[0] < final_id[0] && final_id[0] < two[0] && two[0] < two[1]);
        let entries = outbox.entries(two.clone()).await.unwrap();
        assert_eq!(
            entries.iter().map(|e| e.attachments).collect::<Vec<_>>(),
            [1, 0]
        );
    }
}

fn ids_of(d: &[Due]) -> Vec<i64> {
    ids(d)
}

both!(one_appointment_at_a_time_in_arrival_order);
async fn one_appointment_at_a_time_in_arrival_order(backend: Backend) {
    let f = Fixture::new(backend, 30).await;
    let (_db, outbox) = f.outbox().await;
    let admit = |key: &'static str, appointment: &'static str, status: &'static str| {
        let outbox = outbox.clone();
        async move {
            stored(
                outbox
                    .admit(message(vec![result(key, appointment, status)]))
                    .await
                    .unwrap(),
            )[0]
        }
    };
    let first = admit("k1", "A1", "preliminary").await;
    let second = admit("k2", "A1", "final").await;
    let other = admit("k3", "A2", "final").await;
    assert_eq!(ids(&outbox.claim(10).await.unwrap()), [first, other]);
    // Claimed ones are not handed out again, and their appointment's later results wait.
    assert!(outbox.claim(10).await.unwrap().is_empty());
    outbox.settle(first, submitted()).await.unwrap();
    assert_eq!(ids(&outbox.claim(10).await.unwrap()), [second]);
    // A retry later is not due now, and the time is the store's.
    outbox
        .retry_later(second, Duration::from_secs(60), "503".into(), None)
        .await
        .unwrap();
    assert!(outbox.claim(10).await.unwrap().is_empty());
    let e = outbox.entry(second).await.unwrap().unwrap();
    assert_eq!((e.attempts, e.state), (1, State::Pending));
    assert_eq!(e.last_error.as_deref(), Some("503"));
    let wait = e.next_attempt_at_ms - e.updated_at_ms;
    assert!((59_000..=60_000).contains(&wait), "{wait}");
    // A released claim is handed out again.
    outbox.release(other).await;
    assert_eq!(ids(&outbox.claim(10).await.unwrap()), [other]);
}

both!(a_preliminary_never_follows_a_final);
async fn a_preliminary_never_follows_a_final(backend: Backend) {
    let f = Fixture::new(backend, 30).await;
    let (_db, outbox) = f.outbox().await;
    let final_id = stored(
        outbox
            .admit(message(vec![result("k1", "A1", "final")]))
            .await
            .unwrap(),
    )[0];
    let refused = outbox
        .admit(message(vec![
            result("k2", "A2", "final"),
            result("k3", "A1", "preliminary"),
        ]))
        .await
        .unwrap();
    assert_eq!(
        refused,
        Admission::PreliminaryAfterFinal { index: 1, final_id }
    );
    // Nothing of the refused message was stored.
    assert_eq!(outbox.stats(false).await.unwrap().pending, 1);
    // A final that died does not stand in the way.
    assert_eq!(ids(&outbox.claim(1).await.unwrap()), [final_id]);
    outbox
        .settle(
            final_id,
            Settled::Dead {
                kind: "not_found".into(),
                reason: "404".into(),
                qubs_request_id: None,
            },
        )
        .await
        .unwrap();
    stored(
        outbox
            .admit(message(vec![result("k3", "A1", "preliminary")]))
            .await
            .unwrap(),
    );
}

both!(waiters_hear_of_settling_and_operators_can_requeue_and_purge);
async fn waiters_hear_of_settling_and_operators_can_requeue_and_purge(backend: Backend) {
    let f = Fixture::new(backend, 30).await;
    let (_db, outbox) = f.outbox().await;
    let id = stored(
        outbox
            .admit(message(vec![result("k1", "A1", "final")]))
            .await
            .unwrap(),
    )[0];
    assert_eq!(
        outbox.wait_settled(id, Duration::from_millis(20)).await,
        None
    );
    let waiter = {
        let outbox = outbox.clone();
        tokio::spawn(async move { outbox.wait_settled(id, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let dead = Settled::Dead {
        kind: "rejected".into(),
        reason: "400".into(),
        qubs_request_id: Some("req-1".into()),
    };
    assert_eq!(ids(&outbox.claim(1).await.unwrap()), [id]);
    outbox.settle(id, dead.clone()).await.unwrap();
    assert_eq!(waiter.await.unwrap(), Some(dead.clone()));
    // Waiting on a settled result answers at once and leaves no waiter behind.
    assert_eq!(
        outbox.wait_settled(id, Duration::from_secs(5)).await,
        Some(dead)
    );
    assert!(!outbox.has_waiters());
    let listed = outbox
        .list(EntryFilter {
            state: Some(State::Dead),
            domains: vec!["acme".into()],
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].qubs_request_id.as_deref(), Some("req-1"));
    let other_domain = outbox
        .list(EntryFilter {
            domains: vec!["globex".into()],
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(other_domain.is_empty());
    assert_eq!(outbox.requeue(vec![id]).await.unwrap(), 1);
    assert_eq!(ids(&outbox.claim(10).await.unwrap()), [id]);
    outbox.settle(id, submitted()).await.unwrap();
    // Purge never touches pending results, and takes settled ones older than asked.
    assert_eq!(
        outbox
            .purge(State::Submitted, Duration::from_secs(3600), vec![])
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        outbox
            .purge(State::Submitted, Duration::ZERO, vec![])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        outbox.stats(true).await.unwrap(),
        Stats {
            submitted: Some(0),
            ..Stats::default()
        }
    );
}

// ---------------------------------------------------------------------------------------
// The feed, on both backends.

fn feed_settings(destinations: &[(&str, Ordering)]) -> FeedSettings {
    FeedSettings {
        enabled: true,
        destinations: destinations
            .iter()
            .map(|(name, ordering)| DestinationSettings {
                name: name.to_string(),
                address: Some("127.0.0.1:1".into()),
                ordering: *ordering,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn event(appointment: &str, patient: &str, kind: EventKind, n: u32) -> NewEvent {
    NewEvent {
        appointment_id: appointment.into(),
        patient_id: Some(patient.into()),
        kind,
        fingerprint: format!("fp-{appointment}-{n}"),
        document: format!("{{\"n\":{n}}}").into_bytes(),
        message: format!("MSH|...|{appointment}|{n}"),
        control_id: format!("C-{appointment}-{n}"),
        mapping_version: "v1".into(),
    }
}

/// Takes every lead this test needs (a no-op on SQLite).
async fn lead(db: &Database, leads: &[(&str, &str)]) {
    for (role, scope) in leads {
        let g = db
            .acquire_lease(role, scope, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(g.held, "{role}/{scope} is free");
    }
}

both!(the_watch_state_events_and_cursors_follow_what_was_recorded);
async fn the_watch_state_events_and_cursors_follow_what_was_recorded(backend: Backend) {
    let f = Fixture::new(backend, 30).await;
    let db = f.open().await;
    lead(&db, &[("poll", "acme"), ("poll", "globex")]).await;
    let feed = Feed::open(&db, &feed_settings(&[("ris", Ordering::PerPatient)]))
        .await
        .unwrap();
    assert_eq!(
        (feed.latest_event_id(), feed.first_event_id().await.unwrap()),
        (0, 0)
    );
    assert!(!feed.baselined("acme").await.unwrap());
    feed.record(
        "acme",
        vec![
            event("A1", "P1", EventKind::New, 1),
            event("A2", "P2", EventKind::New, 1),
        ],
        vec![Baseline {
            appointment_id: "A3".into(),
            patient_id: None,
            fingerprint: "fp-A3".into(),
            document: b"{}".to_vec(),
            message: None,
        }],
        vec![],
    )
    .await
    .unwrap();
    feed.record(
        "globex",
        vec![event("G1", "P9", EventKind::New, 1)],
        vec![],
        vec![],
    )
    .await
    .unwrap();
    feed.polled("acme", None).await.unwrap();
    assert!(feed.baselined("acme").await.unwrap());
    let fingerprints = feed.fingerprints("acme").await.unwrap();
    assert_eq!(fingerprints.len(), 3);
    assert_eq!(fingerprints["A1"], "fp-A1-1");
    assert_eq!(
        feed.document("acme", "A2").await.unwrap().as_deref(),
        Some(&b"{\"n\":1}"[..])
    );
    let events = feed.events("acme", 0, 10).await.unwrap();
    assert_eq!(events.len(), 2);
    assert!(events[0].id < events[1].id);
    assert_eq!(
        feed.events("acme", events[0].id, 10).await.unwrap().len(),
        1
    );
    assert_eq!(feed.events("globex", 0, 10).await.unwrap().len(), 1);
    assert_eq!(
        feed.latest_event_id(),
        feed.events("globex", 0, 1).await.unwrap()[0].id
    );
    // A change, then a removal: the removed order is forgotten, its event kept.
    feed.record(
        "acme",
        vec![event("A1", "P1", EventKind::Changed, 2)],
        vec![],
        vec![],
    )
    .await
    .unwrap();
    feed.record(
        "acme",
        vec![event("A2", "P2", EventKind::Removed, 3)],
        vec![],
        vec!["A3".into()],
    )
    .await
    .unwrap();
    let fingerprints = feed.fingerprints("acme").await.unwrap();
    assert_eq!(
        fingerprints.keys().cloned().collect::<BTreeSet<_>>(),
        ["A1".to_string()].into()
    );
    assert_eq!(fingerprints["A1"], "fp-A1-2");
    let kinds: Vec<EventKind> = feed
        .events("acme", 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::New,
            EventKind::New,
            EventKind::Changed,
            EventKind::Removed
        ]
    );
    let watch = &feed.watch_status(vec!["acme".into()]).await.unwrap()[0];
    assert_eq!(
        (watch.polls, watch.tracked_orders, watch.baselined),
        (1, 1, true)
    );
    feed.polled("acme", Some("QUBS said 503".into()))
        .await
        .unwrap();
    let watch = &feed.watch_status(vec!["acme".into()]).await.unwrap()[0];
    assert_eq!((watch.polls, watch.baselined), (2, true));
    assert_eq!(watch.last_error.as_deref(), Some("QUBS said 503"));
}

both!(each_tracked_order_keeps_the_last_message_sent_and_the_mapping_version_compared);
async fn each_tracked_order_keeps_the_last_message_sent_and_the_mapping_version_compared(
    backend: Backend,
) {
    let f = Fixture::new(backend, 30).await;
    let db = f.open().await;
    lead(&db, &[("poll", "acme")]).await;
    let feed = Feed::open(&db, &feed_settings(&[("ris", Ordering::PerPatient)]))
        .await
        .unwrap();
    let baseline = |id: &str, n: u32, held: Option<&str>| Baseline {
        appointment_id: id.into(),
        patient_id: Some(format!("P-{id}")),
        fingerprint: format!("fp-{id}-{n}"),
        document: format!("{{\"n\":{n}}}").into_bytes(),
        message: held.map(|m| (EventKind::New, m.to_string())),
    };
    feed.record(
        "acme",
        vec![event("A1", "P1", EventKind::New, 1)],
        vec![baseline("A3", 1, Some("held A3")), baseline("A4", 1, None)],
        vec![],
    )
    .await
    .unwrap();
    let last_sent =
        |tracked: &[qubs_bridge::feed::Tracked]| -> Vec<(String, Option<(EventKind, String)>)> {
            tracked
                .iter()
                .map(|t| (t.appointment_id.clone(), t.message.clone()))
                .collect()
        };
    let tracked = feed.tracked("acme", None).await.unwrap();
    assert_eq!(
        last_sent(&tracked),
        [
            ("A1".into(), Some((EventKind::New, "MSH|...|A1|1".into()))),
            ("A3".into(), Some((EventKind::New, "held A3".into()))),
            ("A4".into(), None),
        ]
    );
    assert_eq!(tracked[0].document, b"{\"n\":1}");
    assert_eq!(tracked[0].patient_id.as_deref(), Some("P1"));
    assert_eq!(tracked[1].fingerprint, "fp-A3-1");

    // A change replaces the message and its kind; a baseline row without a message (a new
    // fingerprint that changes nothing sent) keeps the one stored.
    feed.record(
        "acme",
        vec![event("A1", "P1", EventKind::Changed, 2)],
        vec![baseline("A3", 2, None)],
        vec![],
    )
    .await
    .unwrap();
    let tracked = feed.tracked("acme", None).await.unwrap();
    assert_eq!(
        last_sent(&tracked)[..2],
        [
            (
                "A1".into(),
                Some((EventKind::Changed, "MSH|...|A1|2".into()))
            ),
            ("A3".into(), Some((EventKind::New, "held A3".into()))),
        ]
    );
    assert_eq!(
        tracked[1].fingerprint, "fp-A3-2",
        "the fingerprint moves on"
    );
    let one = feed.tracked("acme", Some("A3")).await.unwrap();
    assert_eq!(
        last_sent(&one),
        [("A3".into(), Some((EventKind::New, "held A3".into())))]
    );
    assert!(feed.tracked("acme", Some("A9")).await.unwrap().is_empty());
    assert!(feed.tracked("globex", None).await.unwrap().is_empty());

    // A removal forgets the order and its message.
    feed.record(
        "acme",
        vec![event("A1", "P1", EventKind::Removed, 3)],
        vec![],
        vec![],
    )
    .await
    .unwrap();
    let ids: Vec<String> = feed
        .tracked("acme", None)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.appointment_id)
        .collect();
    assert_eq!(ids, ["A3", "A4"]);
}

both!(a_resend_compares_with_the_last_message_sent_and_records_xo_events);
/// `Feed::resend` over the store: an order whose last message differs from what the mapping
/// set renders now gets a `changed` event with a delivery; one whose message is the same
/// does not; on PostgreSQL only the domain's poll leader may record it, a dry run anywhere.
async fn a_resend_compares_with_the_last_message_sent_and_records_xo_events(backend: Backend) {
    use qubs_bridge::feed::resend::{ResendError, ResendRequest};
    use qubs_bridge::mapping::{Body, MapOptions, MappingSet};

    let f = Fixture::new(backend, 30).await;
    let db = f.open().await;
    lead(&db, &[("poll", "acme")]).await;
    let feed = Feed::open(&db, &feed_settings(&[("ris", Ordering::PerPatient)]))
        .await
        .unwrap();
    let mappings = MappingSet::load_dir("mappings").unwrap();
    let order = |id: &str| {
        let mut d: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string("mappings/tests/order-routine-ct/order.json").unwrap(),
        )
        .unwrap();
        d["appointment"]["appointmentId"] = id.into();
        d["event"] = serde_json::json!({"kind": "new"});
        d
    };
    let sent = |id: &str| -> NewEvent {
        let document = order(id);
        let Body::Hl7(message) = mappings
            .map_order_with("orm_o01", &document, &MapOptions::default())
            .unwrap()
            .body
        else {
            panic!("orm_o01 renders HL7")
        };
        NewEvent {
            appointment_id: id.into(),
            patient_id: Some("P-55021".into()),
            kind: EventKind::New,
            fingerprint: mappings.order_fingerprint(&document),
            document: document.to_string().into_bytes(),
            message,
            control_id: format!("C-{id}"),
            mapping_version: "older".into(),
        }
    };
    // A1 was sent as today's mappings render it; A2 by an older mapping whose OBR-24 differs.
    let mut older = sent("A2");
    let today = older.message.clone();
    older.message = older.message.replace("|CT|", "|RAD|");
    assert_ne!(older.message, today, "the older message differs");
    feed.record("acme", vec![sent("A1"), older], vec![], vec![])
        .await
        .unwrap();
    async fn queued(feed: &Feed) -> u64 {
        feed.destination_status_of("ris").await.unwrap().pending
    }
    assert_eq!(queued(&feed).await, 2);

    let request = |changed_only, dry_run| ResendRequest {
        domain: "acme".into(),
        appointment_id: None,
        changed_only,
        dry_run,
    };
    let dry = feed.resend(&mappings, &request(true, true)).await.unwrap();
    assert_eq!(
        (
            dry.tracked,
            dry.changed,
            dry.unchanged,
            dry.unknown,
            dry.resent
        ),
        (2, 1, 1, 0, 0)
    );
    let example = dry.example.unwrap();
    assert_eq!(example.appointment_id, "A2");
    assert_eq!(
        example
            .diffs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["OBR-24: RAD → CT"]
    );
    assert_eq!(queued(&feed).await, 2, "a dry run records nothing");

    // On PostgreSQL, another replica (not the poll leader) may look but not record.
    if let Backend::Postgres = backend {
        let other = Feed::open(
            &f.open().await,
            &feed_settings(&[("ris", Ordering::PerPatient)]),
        )
        .await
        .unwrap();
        assert_eq!(
            other
                .resend(&mappings, &request(true, true))
                .await
                .unwrap()
                .changed,
            1
        );
        let refused = other.resend(&mappings, &request(true, false)).await;
        assert!(
            matches!(
                refused,
                Err(ResendError::Store(StoreError::NotLeader { .. }))
            ),
            "{refused:?}"
        );
        assert_eq!(queued(&feed).await, 2);
    }

    let real = feed.resend(&mappings, &request(true, false)).await.unwrap();
    assert_eq!((real.changed, real.resent), (1, 1));
    assert_eq!(queued(&feed).await, 3);
    let events = feed.events("acme", 0, 10).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.appointment_id.as_str(), last.kind),
        ("A2", EventKind::Changed)
    );
    assert!(last.message.contains("|XO|"), "ORC-1 XO");
    assert_eq!(last.mapping_version, mappings.version());
    let tracked = feed.tracked("acme", Some("A2")).await.unwrap();
    assert_eq!(
        tracked[0].message,
        Some((EventKind::Changed, last.message.clone()))
    );
    // Consumers now have what the mappings render: nothing more to send.
    let again = feed.resend(&mappings, &request(true, false)).await.unwrap();
    assert_eq!((again.changed, again.unchanged, again.resent), (0, 2, 0));
    // Asked for every order, both go again.
    let all = feed
        .resend(&mappings, &request(false, false))
        .await
        .unwrap();
    assert_eq!(all.resent, 2);
    assert_eq!(queued(&feed).await, 5);
    let missing = feed
        .resend(
            &mappings,
            &ResendRequest {
                appointment_id: Some("A9".into()),
                ..request(false, false)
            },
        )
        .await;
    assert!(matches!(missing, Err(ResendError::NotTracked { .. })));
}

/// A file from before messages were kept (feed schema 1): the migration takes each tracked
/// order's last message from the events still retained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_older_file_gets_each_orders_last_message_from_its_events() {
    let f = Fixture::new(Backend::Sqlite, 30).await;
    {
        let db = f.open().await;
        let feed = Feed::open(&db, &feed_settings(&[("ris", Ordering::PerPatient)]))
            .await
            .unwrap();
        feed.record(
            "acme",
            vec![
                event("A1", "P1", EventKind::New, 1),
                event("A2", "P2", EventKind::New, 1),
            ],
            vec![],
            vec![],
        )
        .await
        .unwrap();
        feed.record(
            "acme",
            vec![event("A1", "P1", EventKind::Changed, 2)],
            vec![],
            vec![],
        )
        .await
        .unwrap();
    }
    // Back to schema 1, as a file written before this version was.
    let conn = rusqlite::Connection::open(&f.settings.path).unwrap();
    conn.execute_batch(
        "ALTER TABLE feed_orders DROP COLUMN message;
         ALTER TABLE feed_orders DROP COLUMN message_kind;
         ALTER TABLE feed_watch DROP COLUMN mapping_version;
         UPDATE bridge_schema SET version = 1 WHERE component = 'feed';",
    )
    .unwrap();
    drop(conn);
    let db = f.open().await;
    let feed = Feed::open(&db, &feed_settings(&[("ris", Ordering::PerPatient)]))
        .await
        .unwrap();
    let last: Vec<(String, Option<(EventKind, String)>)> = feed
        .tracked("acme", None)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.appointment_id, t.message))
        .collect();
    assert_eq!(
        last,
        [
            (
                "A1".into(),
                Some((EventKind::Changed, "MSH|...|A1|2".into()))
            ),
            ("A2".into(), Some((EventKind::New, "MSH|...|A2|1".into()))),
        ]
    );
}

/// The same on PostgreSQL: `store migrate` brings a schema-1 database to 2 and fills each
/// tracked order's last message from its retained events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_older_database_gets_each_orders_last_message_from_its_events() {
    let f = Fixture::new(Backend::Postgres, 30).await;
    {
        let db = f.open().await;
        lead(&db, &[("poll", "acme")]).await;
        let feed = Feed::open(&db, &feed_settings(&[("ris", Ordering::PerPatient)]))
            .await
            .unwrap();
        feed.record(
            "acme",
            vec![
                event("A1", "P1", EventKind::New, 1),
                event("A2", "P2", EventKind::New, 1),
            ],
            vec![],
            vec![],
        )
        .await
        .unwrap();
        feed.record(
            "acme",
            vec![event("A1", "P1", EventKind::Changed, 2)],
            vec![],
            vec![],
        )
        .await
        .unwrap();
    }
    let test_db = f._db.as_ref().unwrap();
    test_db
        .connect()
        .await
        .batch_execute(
            "ALTER TABLE feed_orders DROP COLUMN message;
             ALTER TABLE feed_orders DROP COLUMN message_kind;
             ALTER TABLE feed_watch DROP COLUMN mapping_version;
             UPDATE bridge_schema SET version = 1 WHERE component = 'feed';",
        )
        .await
        .unwrap();
    test_db.migrate().await;
    let db = f.open().await;
    let feed = Feed::open(&db, &feed_settings(&[("ris", Ordering::PerPatient)]))
        .await
        .unwrap();
    let last: Vec<(String, Option<(EventKind, String)>)> = feed
        .tracked("acme", None)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.appointment_id, t.message))
        .collect();
    assert_eq!(
        last,
        [
            (
                "A1".into(),
                Some((EventKind::Changed, "MSH|...|A1|2".into()))
            ),
            ("A2".into(), Some((EventKind::New, "MSH|...|A2|1".into()))),
        ]
    );
}

both!(deliveries_keep_order_per_key_and_record_every_outcome);
async fn deliveries_keep_order_per_key_and_record_every_outcome(backend: Backend) {
    let f = Fixture::new(backend, 30).await;
    let db = f.open().await;
    lead(
        &db,
        &[("poll", "acme"), ("deliver", "ris"), ("deliver", "pacs")],
    )
    .await;
    let feed = Feed::open(
        &db,
        &feed_settings(&[("ris", Ordering::PerPatient), ("pacs", Ordering::Strict)]),
    )
    .await
    .unwrap();
    feed.record(
        "acme",
        vec![
            event("A1", "P1", EventKind::New, 1),
            event("A2", "P1", EventKind::New, 1),
            event("A3", "P2", EventKind::New, 1),
        ],
        vec![],
        vec![],
    )
    .await
    .unwrap();
    // Per patient: A2 waits behind A1 (same patient); A3 goes.
    let due = feed.due("ris", false, 10).await.unwrap();
    let appointments: Vec<&str> = due.iter().map(|d| d.appointment_id.as_str()).collect();
    assert_eq!(appointments, ["A1", "A3"]);
    assert_eq!(due[0].control_id, "C-A1-1");
    // Strict: one at a time for the whole destination.
    let strict = feed.due("pacs", true, 10).await.unwrap();
    assert_eq!(strict.len(), 1);
    assert_eq!(strict[0].appointment_id, "A1");
    // A1 retried later: it still holds A2 back, and is not due now.
    feed.settle(
        "ris",
        vec![
            (
                due[0].id,
                Outcome::Retry {
                    delay: Duration::from_secs(60),
                    reason: "no ACK within 30 s".into(),
                },
            ),
            (
                due[1].id,
                Outcome::Delivered {
                    ack_code: Some("AA".into()),
                },
            ),
        ],
    )
    .await
    .unwrap();
    assert!(feed.due("ris", false, 10).await.unwrap().is_empty());
    let next = feed.next_due_in("ris").await.unwrap().unwrap();
    assert!(
        next > Duration::from_secs(58) && next <= Duration::from_secs(60),
        "{next:?}"
    );
    let status = feed.destination_status_of("ris").await.unwrap();
    assert_eq!((status.pending, status.delivered, status.dead), (2, 1, 0));
    assert_eq!(status.last_ack_code.as_deref(), Some("AA"));
    assert_eq!(status.last_error.as_deref(), Some("no ACK within 30 s"));
    // Dead letters, then an operator puts them back.
    let first = feed.due("pacs", true, 10).await.unwrap()[0].id;
    feed.settle(
        "pacs",
        vec![(
            first,
            Outcome::Dead {
                reason: "consumer answered AE".into(),
                ack_code: Some("AE".into()),
            },
        )],
    )
    .await
    .unwrap();
    let all = feed.destination_status().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[1].name.as_str(), all[1].dead, all[1].pending),
        ("pacs", 1, 2)
    );
    assert_eq!(feed.requeue("pacs", vec!["acme".into()]).await.unwrap(), 1);
    assert_eq!(feed.due("pacs", true, 10).await.unwrap()[0].id, first);
    // Events whose deliveries are all settled are pruned; pending ones are kept.
    let ris_due = feed.due("pacs", true, 10).await.unwrap();
    feed.settle(
        "pacs",
        vec![(
            ris_due[0].id,
            Outcome::Delivered {
                ack_code: Some("AA".into()),
            },
        )],
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        feed.prune(Duration::ZERO).await.unwrap(),
        0,
        "A1 is pending for ris"
    );
    let a3_pacs = feed.due("pacs", true, 10).await.unwrap();
    assert_eq!(a3_pacs[0].appointment_id, "A2");
    feed.settle(
        "pacs",
        vec![(a3_pacs[0].id, Outcome::Delivered { ack_code: None })],
    )
    .await
    .unwrap();
    let a3 = feed.due("pacs", true, 10).await.unwrap();
    feed.settle(
        "pacs",
        vec![(a3[0].id, Outcome::Delivered { ack_code: None })],
    )
    .await
    .unwrap();
    // A3 is delivered to both now; A1 and A2 still wait at ris.
    assert_eq!(feed.prune(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(feed.prune(Duration::from_secs(3600)).await.unwrap(), 0);
}

// ---------------------------------------------------------------------------------------
// What the console reads: outbox search, feed dead letters and order timelines, its audit
// log and mapping history — on both backends.

fn from_message(source_id: &str, key: &str, appointment: &str) -> NewMessage {
    NewMessage {
        source: qubs_bridge::outbox::Source::Hl7,
        source_id: source_id.into(),
        body: format!("MSH|{source_id}|{key}").into_bytes(),
        results: vec![result(key, appointment, "final")],
        awaited: false,
    }
}

both!(the_outbox_is_searched_by_message_id_and_paged_newest_first);
async fn the_outbox_is_searched_by_message_id_and_paged_newest_first(backend: Backend) {
    let f = Fixture::new(backend, 30).await;
    let (_db, outbox) = f.outbox().await;
    let mut ids = Vec::new();
    for (n, msh10) in ["M1", "M2", "M1", "M3", "M4"].iter().enumerate() {
        ids.extend(stored(
            outbox
                .admit(from_message(msh10, &format!("k{n}"), &format!("A{n}")))
                .await
                .unwrap(),
        ));
    }
    let search = |source_id: Option<&str>, before_id: Option<i64>, newest_first: bool| {
        let outbox = outbox.clone();
        let filter = EntryFilter {
            source_id: source_id.map(str::to_string),
            before_id,
            newest_first,
            limit: 2,
            ..Default::default()
        };
        async move {
            outbox
                .list(filter)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        }
    };
    // By MSH-10: both results of M1 and nothing else, oldest first unless asked.
    assert_eq!(search(Some("M1"), None, false).await, [ids[0], ids[2]]);
    assert_eq!(search(Some("M1"), None, true).await, [ids[2], ids[0]]);
    assert!(search(Some("nope"), None, true).await.is_empty());
    // Newest first, a page at a time.
    let first = search(None, None, true).await;
    assert_eq!(first, [ids[4], ids[3]]);
    let second = search(None, Some(first[1]), true).await;
    assert_eq!(second, [ids[2], ids[1]]);
    let last = search(None, Some(second[1]), true).await;
    assert_eq!(last, [ids[0]]);
    // Oldest first is unchanged by the new fields.
    assert_eq!(search(None, None, false).await, [ids[0], ids[1]]);
    // Each result's message as received (the playground's input).
    assert_eq!(
        outbox.message(ids[3]).await.unwrap(),
        Some((qubs_bridge::outbox::Source::Hl7, b"MSH|M3|k3".to_vec()))
    );
    assert_eq!(outbox.message(ids[4] + 100).await.unwrap(), None);
}

both!(feed_dead_letters_tracked_orders_and_an_orders_timeline_are_read_back);
async fn feed_dead_letters_tracked_orders_and_an_orders_timeline_are_read_back(backend: Backend) {
    let f = Fixture::new(backend, 30).await;
    let db = f.open().await;
    lead(
        &db,
        &[("poll", "acme"), ("deliver", "ris"), ("deliver", "pacs")],
    )
    .await;
    let feed = Feed::open(
        &db,
        &feed_settings(&[
            ("ris", Ordering::PerPatient),
            ("pacs", Ordering::PerPatient),
        ]),
    )
    .await
    .unwrap();
    feed.record(
        "acme",
        vec![
            event("A1", "P1", EventKind::New, 1),
            event("A2", "P2", EventKind::New, 1),
        ],
        vec![],
        vec![],
    )
    .await
    .unwrap();
    feed.record(
        "acme",
        vec![event("A1", "P1", EventKind::Changed, 2)],
        vec![],
        vec![],
    )
    .await
    .unwrap();
    // ris: A1's NW answered AE and given up on, A2 delivered; pacs: A2 given up on.
    let due = feed.due("ris", false, 10).await.unwrap();
    let a1 = due.iter().find(|d| d.appointment_id == "A1").unwrap().id;
    let a2 = due.iter().find(|d| d.appointment_id == "A2").unwrap().id;
    feed.settle(
        "ris",
        vec![
            (
                a1,
                Outcome::Dead {
                    reason: "consumer answered AE: unknown patient".into(),
                    ack_code: Some("AE".into()),
                },
            ),
            (
                a2,
                Outcome::Delivered {
                    ack_code: Some("AA".into()),
                },
            ),
        ],
    )
    .await
    .unwrap();
    let pacs_a2 = feed
        .due("pacs", false, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.appointment_id == "A2")
        .unwrap()
        .id;
    feed.settle(
        "pacs",
        vec![(
            pacs_a2,
            Outcome::Dead {
                reason: "connect failed".into(),
                ack_code: None,
            },
        )],
    )
    .await
    .unwrap();

    let dead = feed.dead_letters("ris", 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(
        (
            d.id,
            d.domain.as_str(),
            d.appointment_id.as_str(),
            d.kind,
            d.control_id.as_str(),
            d.attempts,
            d.ack_code.as_deref(),
        ),
        (a1, "acme", "A1", EventKind::New, "C-A1-1", 1, Some("AE"))
    );
    assert_eq!(
        d.last_error.as_deref(),
        Some("consumer answered AE: unknown patient")
    );
    assert!(d.updated_at_ms > 0);
    let pacs_dead = feed.dead_letters("pacs", 10).await.unwrap();
    assert_eq!(pacs_dead.len(), 1);
    assert_eq!(pacs_dead[0].appointment_id, "A2");
    assert!(feed.dead_letters("nobody", 10).await.unwrap().is_empty());

    // A1's timeline: the XO first, then the NW, each with both destinations' deliveries.
    let history = feed.order_history("acme", "A1", 10).await.unwrap();
    let kinds: Vec<(EventKind, &str)> = history
        .iter()
        .map(|e| (e.kind, e.control_id.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [(EventKind::Changed, "C-A1-2"), (EventKind::New, "C-A1-1")]
    );
    assert_eq!(history[1].mapping_version, "v1");
    let nw: Vec<(&str, &str, Option<&str>)> = history[1]
        .deliveries
        .iter()
        .map(|d| {
            (
                d.destination.as_str(),
                d.state.as_str(),
                d.ack_code.as_deref(),
            )
        })
        .collect();
    assert_eq!(nw, [("pacs", "pending", None), ("ris", "dead", Some("AE"))]);
    assert_eq!(
        history[1].deliveries[1].last_error.as_deref(),
        Some("consumer answered AE: unknown patient")
    );
    assert_eq!(history[0].deliveries.len(), 2);
    assert_eq!(feed.order_history("acme", "A1", 1).await.unwrap().len(), 1);
    assert!(
        feed.order_history("other", "A1", 10)
            .await
            .unwrap()
            .is_empty()
    );

    // The tracked orders with the document the mappings read, most recently changed first.
    let tracked = feed.tracked_documents("acme", 10).await.unwrap();
    let mut names: Vec<&str> = tracked.iter().map(|(id, _)| id.as_str()).collect();
    names.sort();
    assert_eq!(names, ["A1", "A2"]);
    let a1_doc = &tracked.iter().find(|(id, _)| id == "A1").unwrap().1;
    assert_eq!(a1_doc, br#"{"n":2}"#);
    assert_eq!(feed.tracked_documents("acme", 1).await.unwrap().len(), 1);
    assert!(
        feed.tracked_documents("other", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

fn change(n: usize) -> Change {
    Change {
        user: "ops".into(),
        via: "session".into(),
        action: "outbox.retry".into(),
        target: format!("{n}"),
        detail: format!("requeued {n}"),
        outcome: "ok".into(),
    }
}

fn version(file: &str, before: &str, after: &str) -> NewVersion {
    NewVersion {
        user: "analyst".into(),
        action: "promote".into(),
        file: file.into(),
        before_text: before.into(),
        after_text: after.into(),
        set_before: "s1".into(),
        set_after: "s2".into(),
        note: "ORC-7.6 from the table".into(),
        golden: "12 of 12 golden outputs matched".into(),
    }
}

both!(the_console_audit_log_and_mapping_history_are_shared_and_versions_recorded_once);
async fn the_console_audit_log_and_mapping_history_are_shared_and_versions_recorded_once(
    backend: Backend,
) {
    let f = Fixture::new(backend, 30).await;
    // Two replicas on PostgreSQL; on SQLite one process, so one handle.
    let db_a = f.open().await;
    let db_b = match backend {
        Backend::Sqlite => db_a.clone(),
        Backend::Postgres => f.open().await,
    };
    let (store_a, store_b) = (
        qubs_bridge::console::store::open(&db_a),
        qubs_bridge::console::store::open(&db_b),
    );
    let (audit_a, audit_b) = (
        AuditLog::new(store_a.clone()),
        AuditLog::new(store_b.clone()),
    );
    for n in 0..3 {
        let log = if n == 1 { &audit_b } else { &audit_a };
        log.record(change(n)).await.unwrap();
    }
    // Either replica reads all of it, newest first, paged by id.
    let all = audit_a.list(0, 10).await.unwrap();
    assert_eq!(all, audit_b.list(0, 10).await.unwrap());
    let targets: Vec<&str> = all.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(targets, ["2", "1", "0"]);
    assert_eq!(
        (
            all[0].user.as_str(),
            all[0].via.as_str(),
            all[0].action.as_str(),
            all[0].detail.as_str(),
            all[0].outcome.as_str()
        ),
        ("ops", "session", "outbox.retry", "requeued 2", "ok")
    );
    assert!(all[0].at_ms > 0 && all[0].at_ms >= all[2].at_ms);
    assert_eq!(all[1].replica, db_b.replica().id);
    assert_eq!(all[0].replica, db_a.replica().id);
    let older = audit_b.list(all[0].id, 10).await.unwrap();
    assert_eq!(older.len(), 2);
    assert_eq!(audit_b.list(all[0].id, 1).await.unwrap().len(), 1);

    // Mapping history: a first version, then one on top of it.
    let (history_a, history_b) = (History::new(store_a), History::new(store_b));
    assert_eq!(history_a.latest("orm_o01.yaml").await.unwrap(), None);
    let Recorded::Stored(v1) = history_a
        .record(version("orm_o01.yaml", "old", "new"), None)
        .await
        .unwrap()
    else {
        panic!("the first version is recorded")
    };
    let got = history_b
        .get(v1)
        .await
        .unwrap()
        .expect("every replica sees it");
    assert_eq!(
        (
            got.file.as_str(),
            got.before_text.as_str(),
            got.after_text.as_str(),
            got.set_before.as_str(),
            got.set_after.as_str(),
            got.note.as_str(),
            got.replica.as_str()
        ),
        (
            "orm_o01.yaml",
            "old",
            "new",
            "s1",
            "s2",
            "ORC-7.6 from the table",
            db_a.replica().id.as_str()
        )
    );
    // Two promotions of one file started from v1: the first records, the second is told
    // which version superseded it and records nothing.
    let Recorded::Stored(v2) = history_b
        .record(version("orm_o01.yaml", "new", "newer"), Some(v1))
        .await
        .unwrap()
    else {
        panic!("v2 follows v1")
    };
    match history_a
        .record(version("orm_o01.yaml", "new", "other"), Some(v1))
        .await
        .unwrap()
    {
        Recorded::Superseded(latest) => assert_eq!(latest.id, v2),
        other => panic!("a promotion from a superseded version recorded: {other:?}"),
    }
    // Nor does one that believes the file has no history yet.
    assert!(matches!(
        history_b
            .record(version("orm_o01.yaml", "", "fresh"), None)
            .await
            .unwrap(),
        Recorded::Superseded(_)
    ));
    // Another file's history is its own.
    assert!(matches!(
        history_a
            .record(version("service_request.yaml", "a", "b"), None)
            .await
            .unwrap(),
        Recorded::Stored(_)
    ));
    assert_eq!(
        history_a.latest("orm_o01.yaml").await.unwrap().unwrap().id,
        v2
    );
    let listed: Vec<(String, String)> = history_a
        .list(10)
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.file, v.after_text))
        .collect();
    assert_eq!(
        listed,
        [
            ("service_request.yaml".to_string(), "b".to_string()),
            ("orm_o01.yaml".into(), "newer".into()),
            ("orm_o01.yaml".into(), "new".into()),
        ]
    );
    assert_eq!(history_b.list(1).await.unwrap().len(), 1);
    assert_eq!(history_a.get(9999).await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------
// PostgreSQL: two handles on one database are two replicas.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_are_exclusive_and_a_dead_replicas_are_taken_over_after_the_lease() {
    let f = Fixture::new(Backend::Postgres, 2).await;
    let (db_a, a) = f.outbox().await;
    let (_db_b, b) = f.outbox().await;
    let x = stored(
        a.admit(message(vec![result("k1", "A1", "final")]))
            .await
            .unwrap(),
    )[0];
    let y = stored(
        a.admit(message(vec![result("k2", "A2", "final")]))
            .await
            .unwrap(),
    )[0];
    // Two replicas claiming at once never get the same result.
    let (ca, cb) = tokio::join!(a.claim(1), b.claim(1));
    let (ca, cb) = (ids(&ca.unwrap()), ids(&cb.unwrap()));
    let mut both: Vec<i64> = ca.iter().chain(&cb).copied().collect();
    both.sort();
    assert_eq!(both, [x, y], "a: {ca:?}, b: {cb:?}");
    let a_holds = ca[0];
    let b_holds = cb[0];
    b.settle(b_holds, submitted()).await.unwrap();
    // Replica a keeps its claim alive while it lives: after two leases b still gets nothing.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(b.claim(10).await.unwrap().is_empty());
    // Replica a dies: its claim runs out and b takes the result over.
    drop(a);
    drop(db_a);
    let started = std::time::Instant::now();
    let taken = loop {
        let got = b.claim(10).await.unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never taken over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ids(&taken), [a_holds]);
    assert!(
        started.elapsed() <= Duration::from_millis(2500),
        "taken over after {:?} (lease 2 s)",
        started.elapsed()
    );
    b.settle(a_holds, submitted()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_replica_whose_attempt_failed_leaves_the_retry_to_the_others_first() {
    let f = Fixture::new(Backend::Postgres, 2).await;
    let (_db_a, a) = f.outbox().await;
    let (_db_b, b) = f.outbox().await;
    let id = stored(
        a.admit(message(vec![result("k1", "A1", "final")]))
            .await
            .unwrap(),
    )[0];
    assert_eq!(ids(&a.claim(1).await.unwrap()), [id]);
    a.retry_later(id, Duration::ZERO, "cannot connect".into(), None)
        .await
        .unwrap();
    // Due at once, but not to the replica that just failed it: b takes it.
    assert!(a.claim(1).await.unwrap().is_empty());
    assert_eq!(ids(&b.claim(1).await.unwrap()), [id]);
    b.retry_later(id, Duration::ZERO, "cannot connect".into(), None)
        .await
        .unwrap();
    // Now b waits its turn; a, which did not fail it last, may have it.
    assert!(b.claim(1).await.unwrap().is_empty());
    assert_eq!(ids(&a.claim(1).await.unwrap()), [id]);
    a.retry_later(id, Duration::ZERO, "cannot connect".into(), None)
        .await
        .unwrap();
    // With no other replica taking it, the one that failed gets it back after the yield.
    let started = std::time::Instant::now();
    let again = loop {
        let got = a.claim(1).await.unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ids(&again), [id]);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "taken back after {:?}",
        started.elapsed()
    );
    a.settle(id, submitted()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_lost_claim_records_nothing_and_a_settle_elsewhere_wakes_the_waiter() {
    let f = Fixture::new(Backend::Postgres, 2).await;
    let (db_a, a) = f.outbox().await;
    let (_db_b, b) = f.outbox().await;
    let id = stored(
        a.admit(message(vec![result("k1", "A1", "final")]))
            .await
            .unwrap(),
    )[0];
    assert_eq!(ids(&b.claim(1).await.unwrap()), [id]);
    // b stalls past its lease, as a partition would: its lease runs out and its renewals no
    // longer reach the row (the token they name is gone, so a renewal racing this update
    // cannot extend the lease again): a takes the result over.
    let admin = f._db.as_ref().unwrap().connect().await;
    admin
        .execute(
            "UPDATE outbox_results SET lease_until = bridge_now_ms() - 1,
                 claim_token = -claim_token WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let mut signals = db_a.subscribe();
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move { a.wait_settled(id, Duration::from_secs(10)).await })
    };
    assert_eq!(ids(&a.claim(1).await.unwrap()), [id]);
    // The stalled replica's outcome is refused; the taking-over replica's stands.
    let late = b.settle(
        id,
        Settled::Dead {
            kind: "rejected".into(),
            reason: "late".into(),
            qubs_request_id: None,
        },
    );
    assert!(matches!(late.await, Err(StoreError::ClaimLost(n)) if n == id));
    b.settle(id, submitted()).await.unwrap_err();
    // a settles, and a waiter on a (the replica holding the sender) hears of it.
    a.settle(id, submitted()).await.unwrap();
    assert_eq!(waiter.await.unwrap(), Some(submitted()));
    let heard = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match signals.recv().await {
                Ok(Signal::Notification { payload, .. }) if payload == format!("settled:{id}") => {
                    return true;
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    assert_eq!(heard, Ok(true), "no settled notification");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_retransmission_to_two_replicas_at_once_is_stored_once_in_arrival_order() {
    let f = Fixture::new(Backend::Postgres, 30).await;
    let (_db_a, a) = f.outbox().await;
    let (_db_b, b) = f.outbox().await;
    for round in 0..20 {
        let key = format!("r{round}");
        let msg = || message(vec![result(&key, &format!("A{}", round % 3), "final")]);
        let (x, y) = tokio::join!(a.admit(msg()), b.admit(msg()));
        let (x, y) = (x.unwrap(), y.unwrap());
        match (&x, &y) {
            (Admission::Stored { ids: s }, Admission::Duplicate { ids: d })
            | (Admission::Duplicate { ids: d }, Admission::Stored { ids: s }) => assert_eq!(s, d),
            other => panic!("round {round}: {other:?}"),
        }
    }
    assert_eq!(a.stats(false).await.unwrap().pending, 20);
    // Per appointment, claims follow arrival: the oldest first, one at a time.
    let mut order: HashMap<String, Vec<i64>> = HashMap::new();
    loop {
        let due = a.claim(10).await.unwrap();
        if due.is_empty() {
            break;
        }
        for d in due {
            order
                .entry(d.entry.appointment_id.clone())
                .or_default()
                .push(d.entry.id);
            a.settle(d.entry.id, submitted()).await.unwrap();
        }
    }
    assert_eq!(order.values().map(Vec::len).sum::<usize>(), 20);
    for (appointment, ids) in order {
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{appointment}: {ids:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_leases_move_only_when_free_or_run_out_and_fence_the_writes() {
    let f = Fixture::new(Backend::Postgres, 2).await;
    let a = f.open().await;
    let b = f.open().await;
    let lease = Duration::from_secs(2);
    let g = a.acquire_lease("poll", "acme", lease).await.unwrap();
    assert!(g.held && !g.takeover);
    assert!(!b.acquire_lease("poll", "acme", lease).await.unwrap().held);
    // Renewing keeps it.
    assert!(a.acquire_lease("poll", "acme", lease).await.unwrap().held);
    let feed_a = Feed::open(&a, &feed_settings(&[("ris", Ordering::PerPatient)]))
        .await
        .unwrap();
    let feed_b = Feed::open(&b, &feed_settings(&[("ris", Ordering::PerPatient)]))
        .await
        .unwrap();
    feed_a
        .record(
            "acme",
            vec![event("A1", "P1", EventKind::New, 1)],
            vec![],
            vec![],
        )
        .await
        .unwrap();
    // Not the leader: refused, nothing written.
    let refused = feed_b
        .record(
            "acme",
            vec![event("A1", "P1", EventKind::New, 1)],
            vec![],
            vec![],
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::NotLeader { .. })),
        "{refused:?}"
    );
    assert!(matches!(
        feed_b.polled("acme", None).await,
        Err(StoreError::NotLeader { .. })
    ));
    assert!(matches!(
        feed_b.settle("ris", vec![]).await,
        Err(StoreError::NotLeader { .. })
    ));
    assert_eq!(feed_b.events("acme", 0, 10).await.unwrap().len(), 1);
    // a stops renewing: once the lease has run out, b takes over, and a is fenced out.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let g = b.acquire_lease("poll", "acme", lease).await.unwrap();
    assert!(g.held && g.takeover);
    assert!(matches!(
        feed_a
            .record(
                "acme",
                vec![event("A2", "P2", EventKind::New, 1)],
                vec![],
                vec![]
            )
            .await,
        Err(StoreError::NotLeader { .. })
    ));
    assert!(!a.acquire_lease("poll", "acme", lease).await.unwrap().held);
    // Released: taken at once, not a takeover.
    b.release_lease("poll", "acme").await.unwrap();
    let g = a.acquire_lease("poll", "acme", lease).await.unwrap();
    assert!(g.held && !g.takeover);
    let status = a.status(&SCHEMA).await.unwrap();
    let l = status.leases.iter().find(|l| l.role == "poll").unwrap();
    assert_eq!(l.holder, a.replica().id);
}

/// Several replicas record events of their domains at once, in many small transactions,
/// while `WatchOrders`-style consumers on another replica join at any moment with an empty
/// cursor (the newest event id it knows) and follow one domain ("events after N"). Each
/// must see every event of its domain that was not yet committed when it joined. Were ids
/// drawn in one order and committed in another, a consumer could start past an event still
/// in flight and never see it. To give such interleavings every chance, each inserted event
/// makes its transaction sleep a few random milliseconds between drawing its id and
/// committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_cursor_never_misses_an_event_under_concurrent_writers() {
    const WRITERS: usize = 4;
    const ROUNDS: usize = 60;
    let f = Fixture::new(Backend::Postgres, 30).await;
    f._db
        .as_ref()
        .unwrap()
        .connect()
        .await
        .batch_execute(
            "CREATE FUNCTION test_slow_commit() RETURNS trigger LANGUAGE plpgsql
                 AS $$ BEGIN PERFORM pg_sleep(random() * 0.01); RETURN NEW; END $$;
             CREATE TRIGGER test_slow_commit AFTER INSERT ON feed_events
                 FOR EACH ROW EXECUTE FUNCTION test_slow_commit();",
        )
        .await
        .unwrap();
    let settings = feed_settings(&[("ris", Ordering::PerPatient)]);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let db = f.open().await;
        let domain = format!("d{w}");
        lead(&db, &[("poll", &domain)]).await;
        let feed = Feed::open(&db, &settings).await.unwrap();
        writers.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let events = (0..1 + round % 3)
                    .map(|i| event(&format!("{domain}-{round}-{i}"), "P", EventKind::New, 1))
                    .collect();
                feed.record(&domain, events, vec![], vec![]).await.unwrap();
            }
            drop(db);
        }));
    }
    let reader_db = f.open().await;
    let reader = Feed::open(&reader_db, &settings).await.unwrap();
    // (domain, ids committed when it joined, cursor, ids seen)
    let mut consumers: Vec<(String, BTreeSet<i64>, i64, BTreeSet<i64>)> = Vec::new();
    let mut latest = reader.subscribe();
    let mut joined = 0usize;
    loop {
        let finished = writers.iter().all(|w| w.is_finished());
        // A new consumer whenever the newest id moved, as a WatchOrders call with an
        // empty cursor starts from it.
        if !finished && latest.has_changed().unwrap_or(false) {
            let start = *latest.borrow_and_update();
            let domain = format!("d{}", joined % WRITERS);
            let committed: BTreeSet<i64> = reader
                .events(&domain, 0, 100_000)
                .await
                .unwrap()
                .iter()
                .map(|e| e.id)
                .collect();
            consumers.push((domain, committed, start, BTreeSet::new()));
            joined += 1;
        }
        for (domain, _, cursor, seen) in consumers.iter_mut() {
            for e in reader.events(domain, *cursor, 10_000).await.unwrap() {
                *cursor = e.id;
                seen.insert(e.id);
            }
        }
        if finished {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    let expected: usize = WRITERS * (0..ROUNDS).map(|r| 1 + r % 3).sum::<usize>();
    let mut total = 0;
    let mut by_domain: HashMap<String, BTreeSet<i64>> = HashMap::new();
    for w in 0..WRITERS {
        let d = format!("d{w}");
        let ids: BTreeSet<i64> = reader
            .events(&d, 0, 100_000)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        total += ids.len();
        by_domain.insert(d, ids);
    }
    assert_eq!(total, expected);
    assert!(
        consumers.len() > 20,
        "only {} consumers joined",
        consumers.len()
    );
    let mut missed_in_all = 0;
    for (domain, committed, _, seen) in &consumers {
        let owed: BTreeSet<i64> = by_domain[domain].difference(committed).copied().collect();
        let missed: Vec<&i64> = owed.difference(seen).collect();
        if !missed.is_empty() {
            eprintln!("a consumer of {domain} missed {missed:?}");
            missed_in_all += missed.len();
        }
    }
    assert_eq!(missed_in_all, 0, "consumers missed events (above)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrations_are_safe_from_several_replicas_and_serve_refuses_other_schemas() {
    let db = common::postgres::server().database().await;
    let settings = db.settings(30);
    let metrics = || Arc::new(StoreMetrics::default());
    // No schema yet: serve refuses, saying what to run.
    let e = Database::open(&settings, &SCHEMA, metrics())
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("qubs-bridge store migrate"), "{e}");
    // Three replicas migrate at once: one does the work, the others find it done.
    let mut handles = Vec::new();
    for _ in 0..3 {
        handles.push(Database::open_for_tools(&settings, &SCHEMA).await.unwrap());
    }
    let runs = futures::future::join_all(handles.iter().map(|h| h.migrate(&SCHEMA))).await;
    for r in &runs {
        r.as_ref().expect("every migrate succeeds");
    }
    let upgraded: usize = runs
        .iter()
        .flat_map(|r| r.as_ref().unwrap())
        .filter(|(was, now)| was.stored < *now)
        .count();
    assert_eq!(
        upgraded,
        SCHEMA.len(),
        "each component migrated exactly once"
    );
    Database::open(&settings, &SCHEMA, metrics()).await.unwrap();
    // A newer schema than this build knows: refused.
    db.connect()
        .await
        .execute(
            "UPDATE bridge_schema SET version = 99 WHERE component = 'outbox'",
            &[],
        )
        .await
        .unwrap();
    let e = Database::open(&settings, &SCHEMA, metrics())
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("newer qubs-bridge"), "{e}");
    assert!(handles[0].migrate(&SCHEMA).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_verify_full_with_the_ca_and_passwords_never_shown() {
    // TLS needs a server whose CA the test knows: a cluster of this test's own.
    let cluster = common::postgres::Cluster::start(false);
    let db = cluster.database().await;
    db.migrate().await;
    let url = |mode: &str| {
        db.url
            .replace("sslmode=disable", &format!("sslmode={mode}"))
    };
    let mut settings = db.settings(30);
    settings.url = Some(url("verify-full"));
    settings.ca_file = Some(cluster.ca_file.clone());
    let opened = Database::open(&settings, &SCHEMA, Arc::new(StoreMetrics::default()))
        .await
        .expect("verify-full with the right CA connects");
    opened.heartbeat().await.unwrap();
    // Another CA: refused, saying why.
    let other = common::pki::Pki::new();
    settings.ca_file = Some(other.ca_file());
    let e = Database::open(&settings, &SCHEMA, Arc::new(StoreMetrics::default()))
        .await
        .err()
        .expect("an unknown CA is refused")
        .to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // verify-full without any CA is a configuration error.
    settings.ca_file = None;
    let e = Database::open(&settings, &SCHEMA, Arc::new(StoreMetrics::default()))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("store.ca_file"), "{e}");
    // require encrypts without checking; a password file works; a wrong password is
    // refused without being quoted.
    let dir = tempfile::tempdir().unwrap();
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, format!("{}\n", cluster.password)).unwrap();
    let settings = StoreSettings {
        url: Some(url("require")),
        password_file: Some(pwfile),
        ..Default::default()
    };
    Database::open(&settings, &SCHEMA, Arc::new(StoreMetrics::default()))
        .await
        .expect("require with a password file connects");
    let wrong = StoreSettings {
        url: Some(url("require")),
        password: Some("not-the-password-7f3a".to_string().into()),
        ..Default::default()
    };
    let e = Database::open(&wrong, &SCHEMA, Arc::new(StoreMetrics::default()))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("not-the-password-7f3a"), "{e}");
    drop(opened);
    cluster.stop(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_copy_moves_an_embedded_install_into_an_empty_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.db");
    let sqlite_settings = StoreSettings {
        path: path.clone(),
        ..Default::default()
    };
    let ids = {
        let db = Database::open(&sqlite_settings, &SCHEMA, Arc::new(StoreMetrics::default()))
            .await
            .unwrap();
        let outbox = Outbox::new(&db, Arc::new(StoreMetrics::default()));
        let mut ids = Vec::new();
        for i in 0..30 {
            ids.extend(stored(
                outbox
                    .admit(message(vec![result(
                        &format!("k{i}"),
                        &format!("A{i}"),
                        "final",
                    )]))
                    .await
                    .unwrap(),
            ));
        }
        let claimed = outbox.claim(5).await.unwrap();
        for d in &claimed[..3] {
            outbox.settle(d.entry.id, submitted()).await.unwrap();
        }
        outbox.release(claimed[3].entry.id).await;
        outbox.release(claimed[4].entry.id).await;
        let feed = Feed::open(&db, &feed_settings(&[("ris", Ordering::PerPatient)]))
            .await
            .unwrap();
        feed.record(
            "acme",
            vec![event("A1", "P1", EventKind::New, 1)],
            vec![],
            vec![],
        )
        .await
        .unwrap();
        let console = qubs_bridge::console::store::open(&db);
        AuditLog::new(console.clone())
            .record(change(1))
            .await
            .unwrap();
        History::new(console)
            .record(version("orm_o01.yaml", "old", "new"), None)
            .await
            .unwrap();
        ids
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let target = common::postgres::server().database().await;
    let pg = match Database::open_for_tools(&target.settings(30), &[])
        .await
        .unwrap()
    {
        Database::Postgres(pg) => pg,
        Database::Sqlite(_) => unreachable!(),
    };
    let mut progress = |_: &str, _: u64, _: u64| {};
    let summary = qubs_bridge::store::copy_sqlite_to_postgres(&path, &pg, &SCHEMA, &mut progress)
        .await
        .unwrap();
    let rows: HashMap<String, u64> = summary.tables.into_iter().collect();
    assert_eq!(rows["outbox_results"], 30);
    assert_eq!(rows["outbox_attachments"], 30);
    assert_eq!(rows["feed_events"], 1);
    assert_eq!(rows["feed_deliveries"], 1);
    assert_eq!(rows["console_audit"], 1);
    assert_eq!(rows["console_mapping_versions"], 1);
    // The copy serves as the store: same entries, and new ids continue after the old.
    let (_db, outbox) = {
        let db = Database::open(
            &target.settings(30),
            &SCHEMA,
            Arc::new(StoreMetrics::default()),
        )
        .await
        .unwrap();
        let outbox = Outbox::new(&db, Arc::new(StoreMetrics::default()));
        (db, outbox)
    };
    let stats = outbox.stats(true).await.unwrap();
    assert_eq!((stats.pending, stats.submitted), (27, Some(3)));
    let entries = outbox.entries(ids.clone()).await.unwrap();
    assert_eq!(entries.len(), 30);
    assert_eq!(entries[0].idempotency_key, "k0");
    let next = stored(
        outbox
            .admit(message(vec![result("new", "B1", "final")]))
            .await
            .unwrap(),
    )[0];
    assert!(next > *ids.iter().max().unwrap());
    // The console's history carries on after the copied version, on any replica.
    let history = History::new(qubs_bridge::console::store::open(&_db));
    let copied = history.latest("orm_o01.yaml").await.unwrap().unwrap();
    assert_eq!(copied.after_text, "new");
    match history
        .record(version("orm_o01.yaml", "new", "newer"), Some(copied.id))
        .await
        .unwrap()
    {
        Recorded::Stored(id) => assert!(id > copied.id),
        other => panic!("{other:?}"),
    }
    let due = outbox.claim(100).await.unwrap();
    assert_eq!(due.len(), 28);
    assert_eq!(due[0].body, b"MSH|...");
    // A second copy into the now non-empty database is refused.
    let e = qubs_bridge::store::copy_sqlite_to_postgres(&path, &pg, &SCHEMA, &mut progress)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("already holds qubs-bridge data"), "{e}");
}
