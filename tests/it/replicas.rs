//! Several replicas of the real binary on one PostgreSQL database (`common::replicas`,
//! `common::postgres`):
//!
//! - the failover crash test: three replicas, eight MLLP senders, 2,000 ORU^R01 (some
//!   retransmitted to another replica), 30 % of QUBS calls failing, two replicas killed
//!   with SIGKILL and one restarted: every acknowledged result is in QUBS exactly once;
//! - the feed failover: the feed leader killed mid-drain, the other replica takes over;
//!   every order's last revision reaches the consumer, per patient in order, resends with
//!   their MSH-10, never a second NW;
//! - the database restarted mid-load: results are answered AE while it is away, readiness
//!   says so, and nothing acknowledged is lost;
//! - operations: an `after_submit` ACK waited for on one replica while another submits,
//!   arrival order across replicas, a retransmission to another replica, `outbox list` and
//!   `store check` from any replica, one leader per role, a clean hand-over on SIGTERM.

use crate::common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::replicas::{Replica, config};
use common::{CLIENT_ID, CLIENT_SECRET, GRPC_TOKEN, authed};
use qubs_bridge::grpc::pb;
use qubs_bridge::mllp::MllpClient;
use qubs_bridge::simulator::{Fault, FaultRule, RunningSimulator, Simulator};
use serde_json::json;
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn report_text(i: usize) -> String {
    format!("IMPRESSION: result number {i} of the failover test.")
}

/// An ORU^R01 for appointment `A<i>`, with MSH-10 `id` and OBR-25 `status`.
fn oru(i: usize, id: &str, status: &str, text: &str) -> String {
    [
        format!("MSH|^~\\&|RIS|HOSP|QUBS|RAD|20261127093000||ORU^R01^ORU_R01|{id}|P|2.5.1"),
        "PID|1||P1^^^acme^MR".to_string(),
        format!("ORC|RE|A{i:04}"),
        format!("OBR|1|A{i:04}||CT^CT|||20261127090000|||||||||||||||202611270930|||{status}"),
        format!("OBX|1|TX|||{text}||||||{status}"),
    ]
    .join("\r")
}

/// MSA-1 of an ACK, after checking that MSA-2 echoes `id`.
fn ack_code(ack: &[u8], id: &str) -> String {
    let ack = String::from_utf8_lossy(ack);
    let msa = ack
        .split('\r')
        .find(|s| s.starts_with("MSA|"))
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        msa.split('|').nth(2),
        Some(id),
        "MSA-2 echoes MSH-10: {msa}"
    );
    msa.split('|').nth(1).unwrap_or_default().to_string()
}

async fn simulator(appointments: usize) -> RunningSimulator {
    let sim = Simulator::new();
    sim.add_site("acme", "Main", "Australia/Sydney");
    for i in 1..=appointments {
        sim.put_appointment("acme", common::pending(&format!("A{i:04}")));
    }
    sim.add_client(CLIENT_ID, CLIENT_SECRET, &["acme"]);
    sim.start(([127, 0, 0, 1], 0).into()).await.unwrap()
}

/// 30 % of QUBS calls fail: 10 % 503, 10 % time out, 5 % dropped before and 5 % after
/// the call was processed.
fn thirty_percent_faults(sim: &RunningSimulator) {
    let api = "/integrations/";
    for (fault, p) in [
        (
            Fault::Status {
                status: 503,
                retry_after: None,
            },
            0.10,
        ),
        (Fault::Latency { ms: 1500 }, 0.10 / 0.90),
        (Fault::DropConnection, 0.05 / 0.80),
        (Fault::DropAfterProcessing, 0.05 / 0.75),
    ] {
        sim.add_fault(FaultRule::new(fault).path(api).probability(p));
    }
}

/// Where senders may send: each replica's MLLP address while it runs.
type Targets = Arc<Mutex<Vec<Option<SocketAddr>>>>;

struct Tally {
    acked: Mutex<HashMap<usize, String>>,
    retransmitted: Mutex<usize>,
    other_answers: Mutex<usize>,
}

/// Sends its share, each message until it is answered AA, moving to another replica when
/// the one it talks to goes away; after every eighth AA the same message goes once more
/// to another replica, which must know it already (`strict`: answer AA; otherwise it may
/// answer AE while the database is away).
async fn sender(
    targets: Targets,
    first: usize,
    todo: Vec<usize>,
    tally: Arc<Tally>,
    strict: bool,
) -> Result<(), String> {
    let mut at = first;
    let mut client: Option<(usize, MllpClient)> = None;
    let n = targets.lock().unwrap().len();
    for i in todo {
        let id = format!("FAIL{i:05}");
        let message = oru(i, &id, "F", &report_text(i));
        let started = Instant::now();
        let mut last = String::from("no answer");
        let mut acked_by = None;
        while acked_by.is_none() {
            if started.elapsed() > Duration::from_secs(240) {
                return Err(format!("message {i} never acknowledged; last: {last}"));
            }
            let addr = targets.lock().unwrap()[at % n];
            let Some(addr) = addr else {
                at += 1;
                client = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            if client.as_ref().is_none_or(|(r, _)| *r != at % n) {
                match MllpClient::connect(addr, None, Duration::from_secs(2)).await {
                    Ok(c) => client = Some((at % n, c)),
                    Err(e) => {
                        last = e.to_string();
                        at += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
            let (replica, c) = client.as_mut().unwrap();
            match c.call(message.as_bytes(), Duration::from_secs(30)).await {
                Ok(ack) => {
                    let code = ack_code(&ack, &id);
                    if code == "AA" {
                        acked_by = Some(*replica);
                    } else {
                        *tally.other_answers.lock().unwrap() += 1;
                        last = String::from_utf8_lossy(&ack).replace('\r', " / ");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Err(e) => {
                    last = e.to_string();
                    client = None;
                    at += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tally.acked.lock().unwrap().insert(i, id.clone());
        if i.is_multiple_of(8) {
            // The same message to another replica: found stored, answered the same.
            let by = acked_by.unwrap();
            for step in 1..n {
                let other = (by + step) % n;
                let Some(addr) = targets.lock().unwrap()[other] else {
                    continue;
                };
                let Ok(mut c) = MllpClient::connect(addr, None, Duration::from_secs(2)).await
                else {
                    continue;
                };
                if let Ok(ack) = c.call(message.as_bytes(), Duration::from_secs(30)).await {
                    let code = ack_code(&ack, &id);
                    if code != "AA" && (strict || code != "AE") {
                        return Err(format!(
                            "message {i}, AA from replica {by}, got {code} from replica {other}"
                        ));
                    }
                    *tally.retransmitted.lock().unwrap() += 1;
                }
                break;
            }
        }
    }
    Ok(())
}

/// Waits until `n` messages are acknowledged; panics with the replicas' logs after 4 min.
async fn wait_acked(tally: &Tally, n: usize, what: &str, replicas: &[Replica]) {
    let started = Instant::now();
    loop {
        let acked = tally.acked.lock().unwrap().len();
        if acked >= n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "{what}: only {acked} acknowledged; logs:\n{}",
            replicas
                .iter()
                .map(|r| r.log_tail(10))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_three_replicas_two_killed_lose_nothing_acknowledged_and_submit_nothing_twice() {
    const MESSAGES: usize = 2000;
    const SENDERS: usize = 8;
    const LEASE_SECS: u64 = 3;
    let dir = tempfile::tempdir().unwrap();
    let db = common::postgres::server().database().await;
    db.migrate().await;
    let sim = simulator(MESSAGES).await;
    thirty_percent_faults(&sim);
    let body = config(
        &sim,
        "[results]
ack_mode = \"after_store\"
workers = 16
retry_initial_ms = 50
retry_max_ms = 500
[store]
pool_size = 8",
    );
    let env = db.env(LEASE_SECS);
    let mut replicas: Vec<Replica> = (0..3)
        .map(|r| Replica::start(dir.path(), &format!("r{r}"), &body, &env))
        .collect();
    for r in &replicas {
        r.wait_up().await;
    }
    let targets: Targets = Arc::new(Mutex::new(replicas.iter().map(|r| Some(r.mllp)).collect()));
    let tally = Arc::new(Tally {
        acked: Mutex::new(HashMap::new()),
        retransmitted: Mutex::new(0),
        other_answers: Mutex::new(0),
    });
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let todo: Vec<usize> = (1..=MESSAGES).filter(|i| i % SENDERS == s).collect();
        senders.push(tokio::spawn(sender(
            targets.clone(),
            s,
            todo,
            tally.clone(),
            true,
        )));
    }
    let acked = || tally.acked.lock().unwrap().len();
    // Kill one replica at ~40 % acknowledged, another at ~55 %, restart the first at ~70 %.
    wait_acked(&tally, MESSAGES * 2 / 5, "before the first kill", &replicas).await;
    targets.lock().unwrap()[0] = None;
    replicas[0].kill();
    let killed_at = Instant::now();
    let acked_at_first_kill = acked();
    wait_acked(
        &tally,
        MESSAGES * 11 / 20,
        "before the second kill",
        &replicas,
    )
    .await;
    targets.lock().unwrap()[1] = None;
    replicas[1].kill();
    wait_acked(&tally, MESSAGES * 7 / 10, "before the restart", &replicas).await;
    replicas[0].restart();
    replicas[0].wait_up().await;
    targets.lock().unwrap()[0] = Some(replicas[0].mllp);
    for s in senders {
        if let Err(e) = s.await.unwrap() {
            panic!(
                "{e}\nlogs:\n{}",
                replicas
                    .iter()
                    .map(|r| r.log_tail(20))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    assert_eq!(acked(), MESSAGES);
    // Everything acknowledged reaches QUBS, the killed replicas' claims taken over.
    let started = Instant::now();
    loop {
        let reported: HashSet<String> = sim
            .submissions("acme")
            .into_iter()
            .map(|s| s.appointment_id)
            .collect();
        if reported.len() == MESSAGES {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{} of {MESSAGES} reports in QUBS",
            reported.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut takeovers = 0.0;
    for r in [&replicas[0], &replicas[2]] {
        takeovers += r
            .metric("qubs_bridge_store_takeovers_total{kind=\"outbox_claim\"}")
            .await
            .unwrap_or(0.0);
    }
    // Exactly one submission per acknowledged message, with its content, revision 1.
    let mut per_appointment: HashMap<String, usize> = HashMap::new();
    for s in sim.submissions("acme") {
        *per_appointment.entry(s.appointment_id.clone()).or_default() += 1;
        let i: usize = s.appointment_id[1..].parse().unwrap();
        assert_eq!(
            s.report_text_sha256,
            hex(&Sha256::digest(report_text(i).as_bytes())),
            "wrong report for {}",
            s.appointment_id
        );
        assert_eq!(s.report_status, "final");
    }
    let twice: Vec<_> = per_appointment.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "submitted more than once: {twice:?}");
    assert_eq!(per_appointment.len(), MESSAGES);
    for i in 1..=MESSAGES {
        let report = sim.report("acme", &format!("A{i:04}")).unwrap();
        assert_eq!(report.revision, 1, "A{i:04}");
        assert_eq!(report.report_text, report_text(i));
    }
    let retransmitted = *tally.retransmitted.lock().unwrap();
    let faults = sim.requests().iter().filter(|r| r.fault.is_some()).count();
    eprintln!(
        "failover: {acked_at_first_kill} acknowledged at the first SIGKILL; {MESSAGES} reports exactly once; {retransmitted} retransmissions to another replica answered AA; {} other answers (resent); {takeovers} claims taken over; {faults} QUBS calls failed on purpose; {:?} from the first kill to the end",
        tally.other_answers.lock().unwrap(),
        killed_at.elapsed()
    );
    assert!(
        retransmitted >= MESSAGES / 8 / 2,
        "{retransmitted} retransmissions"
    );
    assert!(faults > 200, "the faults did not fire ({faults})");
    assert!(
        takeovers >= 1.0,
        "no claim was taken over from a killed replica"
    );
}

/// The revision an order ends at: 30 orders get a second, 10 of those a third.
fn revision(i: usize) -> u32 {
    if i.is_multiple_of(15) && i / 15 <= 10 {
        3
    } else if i.is_multiple_of(5) && i / 5 <= 30 {
        2
    } else {
        1
    }
}

/// Pending appointments for the feed: `n` orders of `n / 5` patients.
fn feed_appointment(i: usize, revision: u32) -> serde_json::Value {
    json!({
        "appointmentId": format!("A{i:04}"),
        "status": "PENDING REPORTING",
        "scheduledSite": "Main",
        "patientId": format!("P{:03}", i / 5),
        // One word that name parsing keeps whole: which order, which revision.
        "patientName": format!("Patient R{revision}N{i}X"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_failover_the_leader_killed_mid_drain_every_last_revision_in_order_never_two_nw() {
    const ORDERS: usize = 150;
    const LEASE_SECS: u64 = 3;
    let dir = tempfile::tempdir().unwrap();
    let db = common::postgres::server().database().await;
    db.migrate().await;
    let sim = Simulator::new();
    sim.add_site("acme", "Main", "Australia/Sydney");
    for i in 1..=ORDERS {
        sim.put_appointment("acme", feed_appointment(i, 1));
    }
    sim.add_client(CLIENT_ID, CLIENT_SECRET, &["acme"]);
    let sim = sim.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let consumer = common::consumer::Consumer::start().await;
    // A slow consumer, so that the kill lands mid-drain.
    consumer.slow_down(Duration::from_millis(25));
    let body = config(
        &sim,
        &format!(
            "[feed]
enabled = true
poll_interval_secs = 1
include_comments = false
[[feed.destinations]]
name = \"ris\"
kind = \"mllp\"
address = \"{}\"
ack_timeout_secs = 5
retry_initial_ms = 100
retry_max_ms = 1000
ordering = \"per_patient\"",
            consumer.addr
        ),
    );
    let env = db.env(LEASE_SECS);
    let mut replicas: Vec<Replica> = (0..2)
        .map(|r| Replica::start(dir.path(), &format!("f{r}"), &body, &env))
        .collect();
    for r in &replicas {
        r.wait_up().await;
    }
    // Changes while the first messages drain: 30 orders get a second revision, 10 of those
    // a third.
    consumer.wait_accepted(20, Duration::from_secs(60)).await;
    for i in 1..=30 {
        sim.put_appointment("acme", feed_appointment(i * 5, 2));
    }
    consumer.wait_accepted(50, Duration::from_secs(60)).await;
    // Kill the replica draining the destination.
    let mut leader = None;
    for (n, r) in replicas.iter().enumerate() {
        if r.leads("role=\"deliver\",destination=\"ris\"").await {
            leader = Some(n);
        }
    }
    let leader = leader.expect("one replica drains ris");
    let survivor = 1 - leader;
    assert!(
        !replicas[survivor]
            .leads("role=\"deliver\",destination=\"ris\"")
            .await,
        "two replicas drain ris"
    );
    let before_kill = consumer.received().len();
    let connections = consumer.connections();
    replicas[leader].kill();
    let killed = Instant::now();
    for i in 1..=10 {
        sim.put_appointment("acme", feed_appointment(i * 15, 3));
    }
    // The survivor takes over within the lease plus a few seconds: it connects.
    while consumer.connections() == connections {
        assert!(
            killed.elapsed() < Duration::from_secs(LEASE_SECS + 15),
            "no delivery after the kill; survivor log:\n{}",
            replicas[survivor].log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let takeover = killed.elapsed();
    // Every order's last event reaches the consumer, and it carries the last revision.
    let admin = db.connect().await;
    let started = Instant::now();
    let events: Vec<(i64, String, String, String)> = loop {
        let rows = admin
            .query(
                "SELECT id, appointment_id, kind, control_id FROM feed_events ORDER BY id",
                &[],
            )
            .await
            .unwrap();
        let events: Vec<(i64, String, String, String)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        let last: BTreeMap<&str, &str> = events
            .iter()
            .map(|(_, a, _, c)| (a.as_str(), c.as_str()))
            .collect();
        let received = consumer.received();
        let got: HashSet<&str> = received.iter().map(|r| r.control_id.as_str()).collect();
        let mut last_text: HashMap<&str, &str> = HashMap::new();
        for r in &received {
            last_text.insert(&r.appointment_id, &r.text);
        }
        let revisions_arrived = (1..=ORDERS).all(|i| {
            last_text
                .get(format!("A{i:04}").as_str())
                .is_some_and(|t| t.contains(&format!("R{}N{i}X", revision(i))))
        });
        if revisions_arrived && last.len() == ORDERS && last.values().all(|c| got.contains(*c)) {
            break events;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not every last revision arrived ({} events, {} received)",
            events.len(),
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let received = consumer.received();
    // One event per recording: two replicas never both recorded an order as new.
    let event_of: HashMap<&str, (i64, &str, &str)> = events
        .iter()
        .map(|(id, a, k, c)| (c.as_str(), (*id, a.as_str(), k.as_str())))
        .collect();
    let mut new_events: HashMap<&str, usize> = HashMap::new();
    for (_, a, k, _) in &events {
        if k == "new" {
            *new_events.entry(a.as_str()).or_default() += 1;
        }
    }
    assert!(
        new_events.values().all(|n| *n == 1),
        "an order recorded new twice"
    );
    assert_eq!(new_events.len(), ORDERS);
    // What arrived: every message is a recorded event; a resend repeats an MSH-10 (and its
    // text); per patient, first arrivals follow the events' order; never two NW for one
    // order.
    let mut first_seen: HashMap<&str, &str> = HashMap::new();
    let mut by_patient: HashMap<String, Vec<i64>> = HashMap::new();
    let mut nw: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut resends = 0;
    for r in &received {
        let (id, appointment, _) = event_of
            .get(r.control_id.as_str())
            .unwrap_or_else(|| panic!("{} is no recorded event", r.control_id));
        if let Some(text) = first_seen.get(r.control_id.as_str()) {
            assert_eq!(*text, r.text, "a resend differs");
            resends += 1;
            continue;
        }
        first_seen.insert(&r.control_id, &r.text);
        let i: usize = appointment[1..].parse().unwrap();
        by_patient
            .entry(format!("P{:03}", i / 5))
            .or_default()
            .push(*id);
        if r.order_control == "NW" {
            nw.entry(appointment).or_default().insert(&r.control_id);
        }
    }
    for (patient, ids) in &by_patient {
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{patient} out of order: {ids:?}"
        );
    }
    assert!(
        nw.values().all(|ids| ids.len() == 1),
        "an order announced NW twice"
    );
    eprintln!(
        "feed failover: {before_kill} messages before the kill; takeover after {takeover:?} (lease {LEASE_SECS} s); {} messages, {resends} resent with their MSH-10; {} connections",
        received.len(),
        consumer.connections()
    );
    assert!(
        takeover < Duration::from_secs(LEASE_SECS + 5),
        "takeover took {takeover:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_mid_load_answers_ae_while_away_and_loses_nothing_acknowledged() {
    const MESSAGES: usize = 600;
    const SENDERS: usize = 4;
    // A cluster of this test's own: it is stopped and started again.
    let cluster = common::postgres::Cluster::start(false);
    let db = cluster.database().await;
    db.migrate().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(MESSAGES).await;
    let body = config(
        &sim,
        "[results]
ack_mode = \"after_store\"
retry_initial_ms = 50
retry_max_ms = 500
[store]
pool_size = 8
connect_timeout_secs = 2",
    );
    let env = db.env(3);
    let replicas: Vec<Replica> = (0..2)
        .map(|r| Replica::start(dir.path(), &format!("d{r}"), &body, &env))
        .collect();
    for r in &replicas {
        r.wait_up().await;
    }
    let targets: Targets = Arc::new(Mutex::new(replicas.iter().map(|r| Some(r.mllp)).collect()));
    let tally = Arc::new(Tally {
        acked: Mutex::new(HashMap::new()),
        retransmitted: Mutex::new(0),
        other_answers: Mutex::new(0),
    });
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let todo: Vec<usize> = (1..=MESSAGES).filter(|i| i % SENDERS == s).collect();
        senders.push(tokio::spawn(sender(
            targets.clone(),
            s,
            todo,
            tally.clone(),
            false,
        )));
    }
    let started = Instant::now();
    while tally.acked.lock().unwrap().len() < MESSAGES / 3 {
        assert!(started.elapsed() < Duration::from_secs(120), "too slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The database goes away (a crash), for a few seconds.
    cluster.stop(true);
    let down = Instant::now();
    let mut not_ready = false;
    while down.elapsed() < Duration::from_secs(4) {
        if let Some(text) = replicas[1].admin_text("/readyz").await {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if v["store"]["ready"] == json!(false) && v["ready"] == json!(false) {
                not_ready = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answered_while_down = *tally.other_answers.lock().unwrap();
    let acked_while_down = tally.acked.lock().unwrap().len();
    cluster.restart();
    for s in senders {
        if let Err(e) = s.await.unwrap() {
            panic!(
                "{e}\nlogs:\n{}",
                replicas
                    .iter()
                    .map(|r| r.log_tail(20))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    let started = Instant::now();
    loop {
        let reported: HashSet<String> = sim
            .submissions("acme")
            .into_iter()
            .map(|s| s.appointment_id)
            .collect();
        if reported.len() == MESSAGES {
            break;
        }
        if started.elapsed() >= Duration::from_secs(120) {
            // What the store says of the missing ones, and what the replicas last said.
            let client = db.connect().await;
            let rows = client
                .query(
                    "SELECT appointment_id, state, attempts, claimed_by, lease_until,
                            next_attempt_at, bridge_now_ms(), last_error
                     FROM outbox_results ORDER BY id",
                    &[],
                )
                .await
                .unwrap();
            let missing: Vec<String> = rows
                .iter()
                .filter(|r| !reported.contains(&r.get::<_, String>(0)))
                .map(|r| {
                    format!(
                        "{} state={} attempts={} claimed_by={:?} lease_until={:?} next={:?} now={} error={:?}",
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, i32>(2),
                        r.get::<_, Option<String>>(3),
                        r.get::<_, Option<i64>>(4),
                        r.get::<_, Option<i64>>(5),
                        r.get::<_, i64>(6),
                        r.get::<_, Option<String>>(7),
                    )
                })
                .collect();
            panic!(
                "{} of {MESSAGES} reports in QUBS; {} rows stored; not in QUBS:\n{}\nlogs:\n{}",
                reported.len(),
                rows.len(),
                missing.join("\n"),
                replicas
                    .iter()
                    .map(|r| r.log_tail(30))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut per_appointment: HashMap<String, usize> = HashMap::new();
    for s in sim.submissions("acme") {
        *per_appointment.entry(s.appointment_id).or_default() += 1;
    }
    assert!(per_appointment.values().all(|n| *n == 1), "submitted twice");
    // Ready again.
    let ready_again = Instant::now();
    loop {
        let text = replicas[1].admin_text("/readyz").await.unwrap_or_default();
        if text.contains("\"ready\":true")
            || serde_json::from_str::<serde_json::Value>(&text)
                .is_ok_and(|v| v["store"]["ready"] == json!(true))
        {
            break;
        }
        assert!(ready_again.elapsed() < Duration::from_secs(30), "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "database restart: {acked_while_down} acknowledged when it went down; {answered_while_down} non-AA answers while it was away; all {MESSAGES} in QUBS exactly once"
    );
    assert!(not_ready, "readiness never said the store was away");
    assert!(
        answered_while_down > 0,
        "no result was answered while the database was away"
    );
    cluster.stop(false);
}

async fn send(addr: SocketAddr, message: &str, id: &str) -> String {
    let mut c = MllpClient::connect(addr, None, Duration::from_secs(2))
        .await
        .unwrap();
    let ack = c
        .call(message.as_bytes(), Duration::from_secs(30))
        .await
        .unwrap();
    let code = ack_code(&ack, id);
    if code != "AA" {
        eprintln!(
            "{id} answered {code}: {}",
            String::from_utf8_lossy(&ack).replace('\r', "\n")
        );
    }
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_waits_order_operations_and_leadership() {
    const LEASE_SECS: u64 = 4;
    let dir = tempfile::tempdir().unwrap();
    let db = common::postgres::server().database().await;
    db.migrate().await;
    let sim = simulator(10).await;
    let results = "[results]
ack_mode = \"after_submit\"
ack_wait_secs = 20
retry_initial_ms = 100
retry_max_ms = 300";
    // Replica a cannot reach QUBS at all (a port that refuses connections): it stores, and
    // its own attempts fail; replica b submits.
    let (_refusing, refusing) = common::replicas::refusing_addr();
    let dead_qubs = format!("http://{refusing}/integrations/v1");
    let body_a = config(&sim, results).replacen(&sim.base_url(), &dead_qubs, 1);
    let body_b = config(&sim, results);
    let env = db.env(LEASE_SECS);
    let mut a = Replica::start(dir.path(), "a", &body_a, &env);
    let mut b = Replica::start(dir.path(), "b", &body_b, &env);
    a.wait_up().await;
    b.wait_up().await;

    // An after_submit ACK waited for on a, while b submits.
    let started = Instant::now();
    let code = send(a.mllp, &oru(1, "WAIT1", "F", "IMPRESSION: one."), "WAIT1").await;
    assert_eq!(
        code,
        "AA",
        "a answers AA once b has submitted; log:\n{}",
        a.log_tail(20)
    );
    eprintln!(
        "after_submit across replicas: AA after {:?}",
        started.elapsed()
    );
    assert_eq!(sim.submissions("acme").len(), 1);
    // The same message to b: found, the same answer, nothing submitted again.
    assert_eq!(
        send(b.mllp, &oru(1, "WAIT1", "F", "IMPRESSION: one."), "WAIT1").await,
        "AA"
    );
    assert_eq!(sim.submissions("acme").len(), 1);

    // Arrival order across replicas: a preliminary on a, then the final on b.
    let prelim = oru(2, "ORD-P", "P", "IMPRESSION: preliminary.");
    let final_ = oru(2, "ORD-F", "F", "IMPRESSION: final.");
    let (p, f) = tokio::join!(send(a.mllp, &prelim, "ORD-P"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send(b.mllp, &final_, "ORD-F").await
    });
    assert_eq!(
        (p.as_str(), f.as_str()),
        ("AA", "AA"),
        "logs:\n{}\n{}",
        a.log_tail(30),
        b.log_tail(30)
    );
    let statuses: Vec<String> = sim
        .submissions("acme")
        .into_iter()
        .filter(|s| s.appointment_id == "A0002")
        .map(|s| s.report_status)
        .collect();
    assert_eq!(statuses, ["preliminary", "final"]);
    assert_eq!(sim.report("acme", "A0002").unwrap().revision, 2);

    // Operations from any replica: b lists what a took in.
    let channel = tonic::transport::Endpoint::from_shared(b.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let listed = pb::outbox_service_client::OutboxServiceClient::new(channel)
        .list_outbox(authed(
            pb::ListOutboxRequest {
                limit: 100,
                ..Default::default()
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    let sources: HashSet<String> = listed.entries.iter().map(|e| e.source_id.clone()).collect();
    assert!(
        sources.contains("WAIT1") && sources.contains("ORD-P"),
        "{sources:?}"
    );
    assert_eq!(listed.submitted, 3);
    // Readiness shows the store; one leader for retention.
    let readyz: serde_json::Value =
        serde_json::from_str(&a.admin_text("/readyz").await.unwrap()).unwrap();
    assert_eq!(readyz["store"]["backend"], "postgresql");
    assert_eq!(readyz["store"]["ready"], true);
    let mut leaders = Vec::new();
    for (name, r) in [("a", &a), ("b", &b)] {
        if r.leads("role=\"retention\"").await {
            leaders.push(name);
        }
    }
    assert_eq!(leaders.len(), 1, "retention leaders: {leaders:?}");
    // store check from the command line sees both replicas and the leader.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qubs-bridge"))
        .args(["store", "check", "--format", "json"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(check["backend"], "postgresql");
    assert_eq!(check["current"], true);
    let alive = check["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "alive")
        .count();
    assert_eq!(alive, 2, "{check}");
    assert!(
        check["leaders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["role"] == "retention" && l["current"] == true),
        "{check}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(db.password.as_deref().unwrap_or("-")),
        "the password shows"
    );
    // A clean stop hands the lead over at once, not after the lease.
    let (leader, other) = if leaders[0] == "a" {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    leader.terminate();
    let stopped = Instant::now();
    while !other.leads("role=\"retention\"").await {
        assert!(
            stopped.elapsed() < Duration::from_secs(LEASE_SECS),
            "the lead did not move within the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "clean hand-over of the retention lead: {:?}",
        stopped.elapsed()
    );
}
