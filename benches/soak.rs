//! Soak under faults: results over MLLP and a busy order feed for `--minutes` while the
//! simulator cycles through latency, 429 storms, 5xx bursts, dropped connections and
//! expired tokens; a sample of the bridge every `--sample-secs`; then the verdict.
//!
//! The simulator and the bridge run as child processes (`benches/support`); the feed
//! consumer runs here. The bridge acknowledges results `after_store` by default: senders
//! keep a steady rate through the fault phases (an AA does not wait for QUBS), the outbox
//! absorbs the faults, and the latency column measures the bridge's own intake rather than
//! the injected latency. `--ack-mode after_submit` makes AA wait for QUBS instead; senders
//! then resend what was answered AE ("stored, not confirmed yet") until it is AA.
//!
//! Each result is its own message (MSH-10 `SOAK…`, report text `IMPRESSION: soak result N.`)
//! for one of the simulator's generated appointments (`--appointments`, ids B…). They are
//! taken in turn, so one appointment gets a new result every appointments/rate seconds: the
//! pending list (which the feed polls in full) and the simulator's memory stay bounded over
//! a long run. Exactly once is therefore checked per result, by the report text's SHA-256
//! in the simulator's submissions.
//!
//! Verdict, each PASS or FAIL (exit status 1 on any FAIL):
//! - **exactly once**: every result answered AA is stored in QUBS exactly once, for its
//!   appointment; none stored twice, none missing, nothing stored that was not sent.
//! - **feed caught up**: the consumer's last ORM for every appointment the driver added or
//!   changed carries that appointment's last revision, and the destination queue is empty.
//! - **flat**: over the last third of the run against the middle third, mean RSS grows
//!   less than 20 %, the most open descriptors grow by at most 10, and the median of the
//!   interval p99 latencies at most doubles (+ 5 ms for timer noise).
//!
//! ```text
//! benches/soak.sh                                   # 30 minutes, report under target/soak/
//! cargo bench --bench soak -- --minutes 3 --phase-secs 20 --csv /tmp/soak.csv
//! ```

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qubs_bridge::mllp::MllpClient;
use qubs_bridge::simulator::{Fault, FaultRule};
use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{
    Consumer, SimulatorProcess, arg, cpu_time, memory_mib, metric_in, metrics_text, open_fds,
    percentile, start_bridge_logging, start_simulator,
};
use tokio_util::sync::CancellationToken;

const DOMAIN: &str = "acme";
const DESTINATION: &str = "soak";
const OUTBOX_PENDING: &str = "qubs_bridge_outbox_results{state=\"pending\"}";
const OUTBOX_DEAD: &str = "qubs_bridge_outbox_results{state=\"dead\"}";
const FEED_QUEUE: &str = "qubs_bridge_feed_queue_depth{destination=\"soak\"}";
const FEED_NEW: &str = "qubs_bridge_feed_events_total{kind=\"new\"}";
const FEED_CHANGED: &str = "qubs_bridge_feed_events_total{kind=\"changed\"}";

// Flatness tolerances (last third against the middle third).
const RSS_GROWTH: f64 = 0.20;
const FD_GROWTH: usize = 10;
const P99_FACTOR: f64 = 2.0;
const P99_SLACK_MS: f64 = 5.0;

struct Options {
    minutes: f64,
    connections: usize,
    rate: f64,
    appointments: u32,
    ack_mode: String,
    phase_secs: u64,
    sample_secs: u64,
    feed_rate: f64,
    poll_secs: u64,
    drain_minutes: u64,
    csv: Option<PathBuf>,
    log: Option<PathBuf>,
}

fn options() -> Options {
    let csv: String = arg("--csv", String::new());
    let log: String = arg("--log", String::new());
    Options {
        minutes: arg("--minutes", 30.0),
        connections: arg("--connections", 8),
        rate: arg("--rate", 200.0),
        appointments: arg("--appointments", 10_000),
        ack_mode: arg("--ack-mode", "after_store".to_string()),
        phase_secs: arg("--phase-secs", 60),
        sample_secs: arg("--sample-secs", 30),
        feed_rate: arg("--feed-rate", 2.0),
        poll_secs: arg("--poll-secs", 15),
        drain_minutes: arg("--drain-minutes", 10),
        csv: (!csv.is_empty()).then(|| csv.into()),
        log: (!log.is_empty()).then(|| log.into()),
    }
}

// ---- results ------------------------------------------------------------------------------

fn report_text(seq: u64) -> String {
    format!("IMPRESSION: soak result {seq}.")
}

fn appointment_id(seq: u64, appointments: u32) -> String {
    format!("B{:07}", seq % appointments as u64)
}

/// One ORU^R01 with a single TX OBX: the report QUBS stores is exactly that text.
fn oru(seq: u64, appointment: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|SOAK|DRIVER|QUBS|ACME|20261127093000||ORU^R01^ORU_R01|SOAK{seq:09}|P|2.5.1\r\
         PID|1||P1^^^acme^MR\r\
         ORC|RE|{appointment}\r\
         OBR|1|{appointment}||CT^CT Head|||20261127090000|||||||||||||||202611270930|||F\r\
         OBX|1|TX|||{}||||||F",
        report_text(seq)
    )
    .into_bytes()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// AA or CA: the bridge promised it.
    Accepted,
    /// Sent, but the last answer was no AA (AE "not confirmed yet" under `after_submit`, or
    /// a connection lost at the end): it may or may not be stored, at most once.
    Unconfirmed,
    /// AR, or AE under `after_store`: refused; never expected in this run.
    Refused,
}

/// What the senders share with the sampler and the verdict.
#[derive(Default)]
struct Ledger {
    next: AtomicU64,
    /// (sequence number, answer) per result sent.
    results: Mutex<Vec<(u64, Answer)>>,
    /// Round-trip times of this interval.
    latencies: Mutex<Vec<Duration>>,
    sent: AtomicU64,
    accepted: AtomicU64,
    not_aa: AtomicU64,
    connection_errors: AtomicU64,
}

fn msa_code(ack: &[u8]) -> String {
    let text = String::from_utf8_lossy(ack);
    text.split('\r')
        .find(|s| s.starts_with("MSA|"))
        .and_then(|s| s.split('|').nth(1))
        .unwrap_or_default()
        .to_string()
}

/// One MLLP connection sending `connections/rate`-spaced results until `stop`; a result
/// without an AA is sent again (same message) after a reconnect or, under `after_submit`,
/// after an AE, as a real sender would.
async fn sender(
    mllp: String,
    period: Duration,
    appointments: u32,
    after_submit: bool,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut client: Option<MllpClient> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let seq = ledger.next.fetch_add(1, Ordering::Relaxed);
        let message = oru(seq, &appointment_id(seq, appointments));
        ledger.sent.fetch_add(1, Ordering::Relaxed);
        let answer = loop {
            if client.is_none() {
                match MllpClient::connect(mllp.as_str(), None, Duration::from_secs(5)).await {
                    Ok(c) => client = Some(c),
                    Err(_) => {
                        ledger.connection_errors.fetch_add(1, Ordering::Relaxed);
                        if stop.is_cancelled() {
                            break Answer::Unconfirmed;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            let started = Instant::now();
            let reply = client
                .as_mut()
                .expect("connected")
                .call(&message, Duration::from_secs(90))
                .await;
            match reply {
                Ok(ack) => {
                    ledger.latencies.lock().unwrap().push(started.elapsed());
                    match msa_code(&ack).as_str() {
                        "AA" | "CA" => break Answer::Accepted,
                        "AE" | "CE" if after_submit => {
                            ledger.not_aa.fetch_add(1, Ordering::Relaxed);
                            if stop.is_cancelled() {
                                break Answer::Unconfirmed;
                            }
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        _ => {
                            ledger.not_aa.fetch_add(1, Ordering::Relaxed);
                            break Answer::Refused;
                        }
                    }
                }
                Err(_) => {
                    ledger.connection_errors.fetch_add(1, Ordering::Relaxed);
                    client = None;
                    if stop.is_cancelled() {
                        break Answer::Unconfirmed;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        if answer == Answer::Accepted {
            ledger.accepted.fetch_add(1, Ordering::Relaxed);
        }
        ledger.results.lock().unwrap().push((seq, answer));
    }
}

// ---- the order feed -----------------------------------------------------------------------

fn feed_appointment(id: &str, patient: u32, revision: u32) -> Value {
    json!({
        "domain": DOMAIN,
        "appointmentId": id,
        "status": "PENDING REPORTING",
        "scheduledSite": "Harbour Imaging",
        "appointmentDate": "2026-11-20",
        "startTime": "09:00:00",
        "endTime": "10:00:00",
        "patientId": format!("S{patient:07}"),
        "patientName": "SOAK, Synthetic",
        "studyDescription": "CT Head",
        "modality": "CT",
        "priority": "routine",
        // OBR-13: what the consumer checks for the last revision.
        "clinicalInfo": format!("Soak order {id} revision {revision}."),
        "doctorName": "Dr Alan Referrer",
        "doctorFirstName": "Alan",
        "doctorLastName": "Referrer",
    })
}

/// Adds a new pending appointment and changes an earlier one, alternately, `rate` times a
/// second; `expected` holds each one's last revision.
async fn churn_feed(
    control: String,
    rate: f64,
    expected: Arc<Mutex<HashMap<String, u32>>>,
    stop: CancellationToken,
) {
    let http = reqwest::Client::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut added: Vec<String> = Vec::new();
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        n += 1;
        let (id, revision) = if n % 2 == 1 || added.is_empty() {
            let id = format!("F{:07}", added.len());
            added.push(id.clone());
            (id, 1)
        } else {
            let id = added[rand::rng().random_range(0..added.len())].clone();
            let revision = expected.lock().unwrap()[&id] + 1;
            (id, revision)
        };
        let patient = id[1..].parse::<u32>().unwrap_or(0);
        let put = http
            .put(format!("{control}/appointments/{DOMAIN}"))
            .json(&feed_appointment(&id, patient, revision))
            .send()
            .await;
        match put {
            Ok(r) if r.status().is_success() => {
                expected.lock().unwrap().insert(id, revision);
            }
            other => eprintln!("soak: PUT appointment {id} failed: {other:?}"),
        }
    }
}

// ---- faults -------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Quiet,
    Latency,
    TooMany,
    ServerErrors,
    Drops,
    Tokens,
    Mixed,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Quiet => "quiet",
            Phase::Latency => "latency",
            Phase::TooMany => "429-storm",
            Phase::ServerErrors => "5xx-burst",
            Phase::Drops => "dropped-conn",
            Phase::Tokens => "expired-tokens",
            Phase::Mixed => "mixed",
        }
    }

    /// The simulator's fault rules for this phase (first match wins, so later rules see
    /// only what earlier ones let through). All on the QUBS API, polls and POSTs alike.
    fn rules(self) -> Vec<FaultRule> {
        let api =
            |fault: Fault, p: f64| FaultRule::new(fault).path("/integrations/").probability(p);
        let status = |status: u16, retry_after: Option<&str>| Fault::Status {
            status,
            retry_after: retry_after.map(str::to_string),
        };
        match self {
            Phase::Quiet | Phase::Tokens => Vec::new(),
            // Slow answers, and some slower than the bridge's 2 s request timeout.
            Phase::Latency => vec![
                api(Fault::Latency { ms: 2500 }, 0.05),
                api(Fault::Latency { ms: 300 }, 0.30),
            ],
            Phase::TooMany => vec![api(status(429, Some("1")), 0.60)],
            Phase::ServerErrors => vec![
                api(status(503, None), 0.25),
                api(status(502, None), 0.10),
                api(status(504, None), 0.10),
            ],
            Phase::Drops => vec![
                api(Fault::DropConnection, 0.15),
                api(Fault::DropAfterProcessing, 0.15),
            ],
            Phase::Mixed => vec![
                api(status(429, Some("1")), 0.10),
                api(status(503, None), 0.08),
                api(Fault::DropConnection, 0.05),
                api(Fault::DropAfterProcessing, 0.05),
                api(Fault::Latency { ms: 2500 }, 0.02),
                api(Fault::Latency { ms: 200 }, 0.10),
            ],
        }
    }
}

const CYCLE: &[Phase] = &[
    Phase::Quiet,
    Phase::Latency,
    Phase::Quiet,
    Phase::TooMany,
    Phase::Quiet,
    Phase::ServerErrors,
    Phase::Quiet,
    Phase::Drops,
    Phase::Quiet,
    Phase::Tokens,
    Phase::Quiet,
    Phase::Mixed,
];

struct SimControl {
    http: reqwest::Client,
    control: String,
}

impl SimControl {
    async fn send(&self, request: reqwest::RequestBuilder, what: &str) {
        match request.send().await {
            Ok(r) if r.status().is_success() => {}
            other => panic!("simulator control call {what} failed: {other:?}"),
        }
    }

    async fn clear_faults(&self) {
        let url = format!("{}/faults", self.control);
        self.send(self.http.delete(url), "DELETE /faults").await;
        self.token_lifetime(3600).await;
    }

    async fn token_lifetime(&self, seconds: u64) {
        let url = format!("{}/token-lifetime", self.control);
        let body = json!({ "seconds": seconds });
        self.send(self.http.put(url).json(&body), "PUT /token-lifetime")
            .await;
    }

    async fn rotate_key(&self) {
        let url = format!("{}/rotate-signing-key", self.control);
        self.send(self.http.post(url), "POST /rotate-signing-key")
            .await;
    }

    async fn apply(&self, phase: Phase) {
        self.clear_faults().await;
        for rule in phase.rules() {
            let url = format!("{}/faults", self.control);
            self.send(self.http.post(url).json(&rule), "POST /faults")
                .await;
        }
        if phase == Phase::Tokens {
            // Tokens live 4 s (the bridge renews them at half-life); each key rotation in
            // `cycle_faults` turns the ones in use into 401s.
            self.token_lifetime(4).await;
        }
    }

    /// QUBS requests seen since the last call, how many of them a fault hit, and how many
    /// were refused with 401 (expired or invalidated tokens); clears the log so the
    /// simulator's memory stays flat too.
    async fn take_request_counts(&self) -> (usize, usize, usize) {
        let url = format!("{}/requests", self.control);
        let log: Vec<Value> = match self.http.get(&url).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        self.send(self.http.delete(url), "DELETE /requests").await;
        let faults = log.iter().filter(|r| !r["fault"].is_null()).count();
        let refused = log.iter().filter(|r| r["status"] == 401).count();
        (log.len(), faults, refused)
    }
}

/// Runs the phases in turn from `started` until `stop`, on a fixed schedule so phases
/// line up with samples; `log` gets each phase's start.
async fn cycle_faults(
    sim: Arc<SimControl>,
    started: Instant,
    phase_len: Duration,
    log: Arc<Mutex<Vec<(Instant, Phase)>>>,
    stop: CancellationToken,
) {
    for (n, &phase) in CYCLE.iter().cycle().enumerate() {
        sim.apply(phase).await;
        log.lock().unwrap().push((Instant::now(), phase));
        let ends = started + phase_len * (n as u32 + 1);
        while Instant::now() < ends {
            // Expired tokens: a new signing key four times a phase.
            let step = if phase == Phase::Tokens {
                (phase_len / 4).max(Duration::from_secs(3))
            } else {
                phase_len
            };
            tokio::select! {
                _ = tokio::time::sleep(step.min(ends.saturating_duration_since(Instant::now()))) => {}
                _ = stop.cancelled() => return,
            }
            if phase == Phase::Tokens && Instant::now() < ends {
                sim.rotate_key().await;
            }
        }
    }
}

// ---- samples ------------------------------------------------------------------------------

struct Sample {
    t: f64,
    phase: String,
    sent_per_s: f64,
    accepted: u64,
    p50: f64,
    p99: f64,
    rss: f64,
    fds: usize,
    cpu: f64,
    outbox: f64,
    feed_queue: f64,
    qubs_requests: usize,
    faults: usize,
    unauthorized: usize,
}

const HEADER: &str = "    t(s)  phase            sent/s  accepted  p50(ms)  p99(ms)  RSS(MiB)  fds  cpu(%)  outbox  feedq  QUBS-req  faults   401s";
const CSV_HEADER: &str = "t_secs,phase,sent_per_sec,accepted_total,p50_ms,p99_ms,rss_mib,open_fds,cpu_percent,outbox_pending,feed_queue_depth,qubs_requests,faults_injected,qubs_401";

/// Widths of the table's columns after the first two (time, phase).
const WIDTHS: [usize; 12] = [7, 9, 8, 8, 9, 4, 7, 7, 6, 9, 7, 6];

impl Sample {
    /// The columns, each at its precision, in the order HEADER and CSV_HEADER name them.
    fn columns(&self) -> [String; 14] {
        [
            format!("{:.0}", self.t),
            self.phase.clone(),
            format!("{:.1}", self.sent_per_s),
            self.accepted.to_string(),
            format!("{:.2}", self.p50),
            format!("{:.2}", self.p99),
            format!("{:.1}", self.rss),
            self.fds.to_string(),
            format!("{:.1}", self.cpu),
            format!("{:.0}", self.outbox),
            format!("{:.0}", self.feed_queue),
            self.qubs_requests.to_string(),
            self.faults.to_string(),
            self.unauthorized.to_string(),
        ]
    }

    fn row(&self) -> String {
        let c = self.columns();
        let mut line = format!("{:>8}  {:<15}", c[0], c[1]);
        for (value, width) in c[2..].iter().zip(WIDTHS) {
            line.push_str(&format!(" {value:>width$}"));
        }
        line
    }

    fn csv(&self) -> String {
        self.columns().join(",")
    }
}

/// The phases active for at least a second of `from..to`, joined by `+`.
fn phases_between(log: &[(Instant, Phase)], from: Instant, to: Instant) -> String {
    let mut names: Vec<&str> = Vec::new();
    for (i, (start, phase)) in log.iter().enumerate() {
        let end = log.get(i + 1).map_or(to, |(next, _)| *next);
        let overlap = end.min(to).saturating_duration_since((*start).max(from));
        if overlap >= Duration::from_secs(1) && names.last() != Some(&phase.name()) {
            names.push(phase.name());
        }
    }
    if names.is_empty() {
        "-".to_string()
    } else {
        names.join("+")
    }
}

// ---- the verdict --------------------------------------------------------------------------

struct Verdict {
    lines: Vec<String>,
    failed: bool,
}

impl Verdict {
    fn check(&mut self, name: &str, pass: bool, detail: String) {
        self.failed |= !pass;
        self.lines.push(format!(
            "{:<5} {name:<15} {detail}",
            if pass { "PASS" } else { "FAIL" }
        ));
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every result answered AA stored exactly once, for its appointment.
async fn verify_exactly_once(
    sim: &SimulatorProcess,
    ledger: &Ledger,
    appointments: u32,
    verdict: &mut Verdict,
) {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Stored {
        appointment_id: String,
        report_text_sha256: String,
    }
    let stored: Vec<Stored> = reqwest::get(format!("{}/submissions/{DOMAIN}", sim.control()))
        .await
        .expect("submissions")
        .json()
        .await
        .expect("submissions JSON");
    let mut by_text: HashMap<&str, Vec<&str>> = HashMap::new();
    for s in &stored {
        by_text
            .entry(s.report_text_sha256.as_str())
            .or_default()
            .push(s.appointment_id.as_str());
    }
    let results = ledger.results.lock().unwrap();
    let (mut accepted, mut once, mut unconfirmed, mut unconfirmed_stored, mut refused) =
        (0, 0, 0, 0, 0);
    let mut missing = Vec::new();
    let mut twice = Vec::new();
    let mut wrong_appointment = Vec::new();
    let mut ours = HashSet::new();
    for &(seq, answer) in results.iter() {
        let sha = hex(&Sha256::digest(report_text(seq).as_bytes()));
        let appointment = appointment_id(seq, appointments);
        let found = by_text.get(sha.as_str()).map_or(&[][..], Vec::as_slice);
        if found.iter().any(|a| *a != appointment) {
            wrong_appointment.push(seq);
        }
        match answer {
            Answer::Accepted => {
                accepted += 1;
                match found.len() {
                    0 => missing.push(seq),
                    1 => once += 1,
                    _ => twice.push(seq),
                }
            }
            Answer::Unconfirmed | Answer::Refused => {
                if answer == Answer::Refused {
                    refused += 1;
                } else {
                    unconfirmed += 1;
                }
                unconfirmed_stored += found.len().min(1);
                if found.len() > 1 {
                    twice.push(seq);
                }
            }
        }
        ours.insert(sha);
    }
    let unexpected = stored
        .iter()
        .filter(|s| !ours.contains(&s.report_text_sha256))
        .count();
    let distinct: HashSet<&str> = stored.iter().map(|s| s.appointment_id.as_str()).collect();
    // The first few message control ids, for a look in the bridge's outbox.
    let first = |v: &[u64]| -> String {
        v.iter()
            .take(5)
            .map(|s| format!(" SOAK{s:09}"))
            .collect::<String>()
    };
    verdict.check(
        "exactly once",
        missing.is_empty()
            && twice.is_empty()
            && wrong_appointment.is_empty()
            && unexpected == 0
            && refused == 0,
        format!(
            "{accepted} answered AA, {once} stored exactly once, {} missing{}, {} stored twice{}, {} for another appointment, {unexpected} not sent by the driver; {unconfirmed} never answered AA ({unconfirmed_stored} of them stored, at most once each), {refused} refused; {} submissions over {} appointments",
            missing.len(),
            first(&missing),
            twice.len(),
            first(&twice),
            wrong_appointment.len(),
            stored.len(),
            distinct.len()
        ),
    );
}

/// The consumer's last ORM for every added or changed appointment has its last revision.
fn verify_feed(
    consumer: &Consumer,
    expected: &HashMap<String, u32>,
    queue: f64,
    verdict: &mut Verdict,
) {
    let stale = stale_orders(consumer, expected);
    let changed = expected.values().filter(|r| **r > 1).count();
    let changes: u32 = expected.values().map(|r| r - 1).sum();
    verdict.check(
        "feed caught up",
        stale.is_empty() && queue == 0.0,
        format!(
            "{} appointments added, {changes} changes to {changed} of them; {} without their last revision at the consumer{}; queue depth {queue}; {} ORM^O01 received in all",
            expected.len(),
            stale.len(),
            stale.iter().take(5).map(|id| format!(" {id}")).collect::<String>(),
            consumer.received.load(Ordering::Relaxed)
        ),
    );
}

fn stale_orders(consumer: &Consumer, expected: &HashMap<String, u32>) -> Vec<String> {
    let mut stale: Vec<String> = expected
        .iter()
        .filter(|(id, revision)| {
            consumer
                .latest(id)
                .is_none_or(|m| !m.contains(&format!("Soak order {id} revision {revision}.")))
        })
        .map(|(id, _)| id.clone())
        .collect();
    stale.sort();
    stale
}

/// Last third against the middle third of the run's samples.
fn verify_flat(samples: &[Sample], run_secs: f64, verdict: &mut Verdict) {
    let third = |k: f64| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|s| s.t > run_secs * k / 3.0 && s.t <= run_secs * (k + 1.0) / 3.0 + 1.0)
            .collect()
    };
    let (middle, last) = (third(1.0), third(2.0));
    if middle.len() < 2 || last.len() < 2 {
        verdict.lines.push(format!(
            "n/a   flat            too few samples ({} in the middle third, {} in the last): run longer",
            middle.len(),
            last.len()
        ));
        return;
    }
    let rss = |v: &[&Sample]| mean(&v.iter().map(|s| s.rss).collect::<Vec<_>>());
    let (rss_mid, rss_last) = (rss(&middle), rss(&last));
    let growth = rss_last / rss_mid - 1.0;
    verdict.check(
        "flat RSS",
        growth < RSS_GROWTH,
        format!(
            "mean {rss_mid:.1} MiB (middle third) -> {rss_last:.1} MiB (last third): {:+.1} % (limit +{:.0} %)",
            growth * 100.0,
            RSS_GROWTH * 100.0
        ),
    );
    let fds = |v: &[&Sample]| v.iter().map(|s| s.fds).max().unwrap_or(0);
    let (fd_mid, fd_last) = (fds(&middle), fds(&last));
    verdict.check(
        "flat fds",
        fd_last <= fd_mid + FD_GROWTH,
        format!("most open {fd_mid} (middle third) -> {fd_last} (last third) (limit +{FD_GROWTH})"),
    );
    let p99 = |v: &[&Sample]| median(&v.iter().map(|s| s.p99).collect::<Vec<_>>());
    let (p99_mid, p99_last) = (p99(&middle), p99(&last));
    verdict.check(
        "flat latency",
        p99_last <= p99_mid * P99_FACTOR + P99_SLACK_MS,
        format!(
            "median interval p99 {p99_mid:.2} ms (middle third) -> {p99_last:.2} ms (last third) (limit x{P99_FACTOR} + {P99_SLACK_MS} ms)"
        ),
    );
}

// ---- main ---------------------------------------------------------------------------------

/// Prints a line at once (the output is usually piped through `tee`).
fn say(line: &str) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

#[tokio::main]
async fn main() {
    let o = options();
    let run = Duration::from_secs_f64(o.minutes * 60.0);
    say(&format!(
        "qubs-bridge soak: {} min, {} MLLP connections at {} results/s in all, ack_mode {}, {} appointments, faults change every {} s, feed: {} adds/changes per s, polled every {} s; sample every {} s; {} cores",
        o.minutes,
        o.connections,
        o.rate,
        o.ack_mode,
        o.appointments,
        o.phase_secs,
        o.feed_rate,
        o.poll_secs,
        o.sample_secs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    let sim = start_simulator(o.appointments);
    let control = Arc::new(SimControl {
        http: reqwest::Client::new(),
        control: sim.control(),
    });
    let consumer_stop = CancellationToken::new();
    let (consumer, consumer_addr) =
        Consumer::start("127.0.0.1:0".parse().unwrap(), true, consumer_stop.clone()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = match &o.log {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
        None => Stdio::from(std::fs::File::create(dir.path().join("bridge.log")).unwrap()),
    };
    // Retry ceilings lowered from the defaults (5 min) so the drain after the last phase is
    // bounded by minutes; comments are not fetched so a poll costs one GET per page.
    let extra = format!(
        r#"
[results]
ack_mode = "{ack_mode}"
retry_max_ms = 20000

[feed]
enabled = true
poll_interval_secs = {poll}
first_run = "send_all"
include_comments = false
retry_max_ms = 20000

[[feed.destinations]]
name = "{DESTINATION}"
address = "{consumer_addr}"
retry_initial_ms = 200
retry_max_ms = 5000
"#,
        ack_mode = o.ack_mode,
        poll = o.poll_secs,
    );
    let bridge = start_bridge_logging(
        &sim,
        dir.path(),
        &[("QUBS_BRIDGE__QUBS__REQUEST_TIMEOUT_MS", "2000")],
        &extra,
        log,
    )
    .await;
    let admin_started = Instant::now();

    // The first poll sends every pending order; let that settle before the clock starts.
    loop {
        let text = metrics_text(&bridge).await.unwrap_or_default();
        let new = metric_in(&text, FEED_NEW).unwrap_or(0.0);
        let queue = metric_in(&text, FEED_QUEUE).unwrap_or(f64::NAN);
        if new >= o.appointments as f64 && queue == 0.0 {
            say(&format!(
                "initial feed: {new:.0} orders sent and acknowledged {:.1} s after start; bridge RSS {:.1} MiB",
                admin_started.elapsed().as_secs_f64(),
                memory_mib(bridge.pid, "VmRSS")
            ));
            break;
        }
        assert!(
            admin_started.elapsed() < Duration::from_secs(600),
            "the initial feed did not settle"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = control.take_request_counts().await;

    let stop = CancellationToken::new();
    let ledger = Arc::new(Ledger::default());
    let expected = Arc::new(Mutex::new(HashMap::new()));
    let phases = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let period = Duration::from_secs_f64(o.connections as f64 / o.rate);
    for _ in 0..o.connections {
        tasks.push(tokio::spawn(sender(
            bridge.mllp.clone(),
            period,
            o.appointments,
            o.ack_mode == "after_submit",
            ledger.clone(),
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(churn_feed(
        sim.control(),
        o.feed_rate,
        expected.clone(),
        stop.clone(),
    )));
    let faults = tokio::spawn(cycle_faults(
        control.clone(),
        started,
        Duration::from_secs(o.phase_secs),
        phases.clone(),
        stop.clone(),
    ));

    let mut csv = o.csv.as_ref().map(|p| {
        let mut f = std::fs::File::create(p).expect("CSV file");
        writeln!(f, "{CSV_HEADER}").unwrap();
        f
    });
    say(HEADER);
    let mut samples = Vec::new();
    let mut last_at = started;
    let mut last_sent = 0;
    let mut last_cpu = cpu_time(bridge.pid);
    let sample_every = Duration::from_secs(o.sample_secs);
    let mut next = started + sample_every;
    while next <= started + run {
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        let interval = now - last_at;
        let mut latencies = std::mem::take(&mut *ledger.latencies.lock().unwrap());
        latencies.sort();
        let sent = ledger.sent.load(Ordering::Relaxed);
        let cpu = cpu_time(bridge.pid);
        let text = metrics_text(&bridge).await.unwrap_or_default();
        let (qubs_requests, faults, unauthorized) = control.take_request_counts().await;
        let sample = Sample {
            t: (now - started).as_secs_f64(),
            phase: phases_between(&phases.lock().unwrap(), last_at, now),
            sent_per_s: (sent - last_sent) as f64 / interval.as_secs_f64(),
            accepted: ledger.accepted.load(Ordering::Relaxed),
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            rss: memory_mib(bridge.pid, "VmRSS"),
            fds: open_fds(bridge.pid),
            cpu: (cpu - last_cpu).as_secs_f64() / interval.as_secs_f64() * 100.0,
            outbox: metric_in(&text, OUTBOX_PENDING).unwrap_or(f64::NAN),
            feed_queue: metric_in(&text, FEED_QUEUE).unwrap_or(f64::NAN),
            qubs_requests,
            faults,
            unauthorized,
        };
        say(&sample.row());
        if let Some(f) = csv.as_mut() {
            writeln!(f, "{}", sample.csv()).unwrap();
        }
        samples.push(sample);
        (last_at, last_sent, last_cpu) = (now, sent, cpu);
        next += sample_every;
    }

    // Stop the load and the faults, then let the outbox and the feed finish.
    stop.cancel();
    let _ = faults.await;
    control.clear_faults().await;
    for t in tasks {
        t.await.expect("load task");
    }
    let run_secs = started.elapsed().as_secs_f64();
    let expected = expected.lock().unwrap().clone();
    say(&format!(
        "load stopped after {run_secs:.0} s: {} results sent, {} answered AA, {} other answers, {} connection errors; draining",
        ledger.sent.load(Ordering::Relaxed),
        ledger.accepted.load(Ordering::Relaxed),
        ledger.not_aa.load(Ordering::Relaxed),
        ledger.connection_errors.load(Ordering::Relaxed)
    ));
    let drain_started = Instant::now();
    let mut settled_reads = 0;
    let (mut outbox, mut queue, mut dead) = (f64::NAN, f64::NAN, f64::NAN);
    while drain_started.elapsed() < Duration::from_secs(o.drain_minutes * 60) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let text = metrics_text(&bridge).await.unwrap_or_default();
        outbox = metric_in(&text, OUTBOX_PENDING).unwrap_or(f64::NAN);
        queue = metric_in(&text, FEED_QUEUE).unwrap_or(f64::NAN);
        dead = metric_in(&text, OUTBOX_DEAD).unwrap_or(f64::NAN);
        // The gauges refresh every couple of seconds: settled means several reads in a row.
        let done = outbox == 0.0 && queue == 0.0 && stale_orders(&consumer, &expected).is_empty();
        settled_reads = if done { settled_reads + 1 } else { 0 };
        if settled_reads >= 5 {
            break;
        }
    }
    let text = metrics_text(&bridge).await.unwrap_or_default();
    say(&format!(
        "drained in {:.0} s: outbox pending {outbox}, dead {dead}; feed queue {queue}; feed events new {:.0}, changed {:.0}; bridge RSS {:.1} MiB (peak {:.1}), {} fds",
        drain_started.elapsed().as_secs_f64(),
        metric_in(&text, FEED_NEW).unwrap_or(f64::NAN),
        metric_in(&text, FEED_CHANGED).unwrap_or(f64::NAN),
        memory_mib(bridge.pid, "VmRSS"),
        memory_mib(bridge.pid, "VmHWM"),
        open_fds(bridge.pid)
    ));

    let mut verdict = Verdict {
        lines: Vec::new(),
        failed: false,
    };
    verify_exactly_once(&sim, &ledger, o.appointments, &mut verdict).await;
    verify_feed(&consumer, &expected, queue, &mut verdict);
    verify_flat(&samples, run.as_secs_f64(), &mut verdict);
    say("Summary");
    for line in &verdict.lines {
        say(line);
    }
    say(if verdict.failed {
        "SOAK FAILED"
    } else {
        "SOAK PASSED"
    });
    // `exit` skips destructors: stop the children and remove the store first.
    drop(bridge);
    drop(sim);
    drop(dir);
    consumer_stop.cancel();
    std::process::exit(if verdict.failed { 1 } else { 0 });
}
