//! The crash test: the real binary takes 1,000 ORU^R01 over MLLP while the simulator fails
//! 30% of QUBS calls (503s, timeouts, dropped connections before and after processing); it
//! is killed with SIGKILL mid-run and started again on the same outbox. From the
//! simulator's records: every message acknowledged AA ends as exactly one correct report,
//! nothing acknowledged is lost, nothing is submitted twice.
//!
//! Runs once per ack mode: `after_store` (AA on disk, QUBS later — the restart must finish
//! the submissions) and `after_submit` (AA after QUBS; the sender resends what the crash
//! left unanswered); each against today's simulator and the strict one (where, besides,
//! 5% of report POSTs take longer than the bridge waits, so its retry meets the first
//! attempt still in progress: 409).

use crate::common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{CLIENT_ID, CLIENT_SECRET, Mode, in_both_modes, pending};
use qubs_bridge::mllp::MllpClient;
use qubs_bridge::simulator::{Fault, FaultRule, RunningSimulator, Simulator};
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_qubs-bridge");
const MESSAGES: usize = 1000;
const SENDERS: usize = 8;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn report_text(i: usize) -> String {
    format!("IMPRESSION: result number {i} of the crash test.")
}

fn oru(i: usize) -> String {
    [
        format!("MSH|^~\\&|RIS|HOSP|QUBS|RAD|20261127093000||ORU^R01^ORU_R01|CRASH{i:05}|P|2.5.1"),
        "PID|1||P1^^^acme^MR".to_string(),
        format!("ORC|RE|A{i:04}"),
        format!("OBR|1|A{i:04}||CT^CT|||20261127090000|||||||||||||||202611270930|||F"),
        format!("OBX|1|TX|||{}||||||F", report_text(i)),
    ]
    .join("\r")
}

struct Bridge {
    child: Child,
    mllp: SocketAddr,
}

fn start_bridge(config: &std::path::Path, mllp: SocketAddr, log: &std::path::Path) -> Bridge {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .env("QUBS_BRIDGE__QUBS__CLIENT_SECRET", CLIENT_SECRET)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the binary starts");
    Bridge { child, mllp }
}

/// One sender: sends its share, resending (after reconnecting) whatever got no ACK.
async fn sender(
    bridge: Arc<Mutex<Option<SocketAddr>>>,
    todo: Vec<usize>,
    acked: Arc<Mutex<HashMap<usize, String>>>,
) -> Result<(), String> {
    let mut client: Option<MllpClient> = None;
    for i in todo {
        let message = oru(i);
        let started = Instant::now();
        let mut last = String::from("no answer");
        loop {
            if started.elapsed() > Duration::from_secs(240) {
                return Err(format!(
                    "message {i} never acknowledged; last answer: {last}"
                ));
            }
            let addr = *bridge.lock().unwrap();
            let Some(addr) = addr else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if client.is_none() {
                match MllpClient::connect(addr, None, Duration::from_secs(2)).await {
                    Ok(c) => client = Some(c),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let reply = client
                .as_mut()
                .unwrap()
                .call(message.as_bytes(), Duration::from_secs(60))
                .await;
            match reply {
                Ok(ack) => {
                    let ack = String::from_utf8_lossy(&ack).to_string();
                    let msa = ack
                        .split('\r')
                        .find(|s| s.starts_with("MSA|"))
                        .unwrap_or_default()
                        .to_string();
                    assert!(
                        msa.ends_with(&format!("|CRASH{i:05}"))
                            || msa.contains(&format!("|CRASH{i:05}|")),
                        "MSA-2 must echo MSH-10: {msa}"
                    );
                    let code = msa.split('|').nth(1).unwrap_or_default().to_string();
                    last = ack.replace('\r', " / ");
                    if code == "AA" {
                        acked.lock().unwrap().insert(i, code);
                        break;
                    }
                    // AE "not confirmed yet" under faults (after_submit): resend later, as
                    // a sender would.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    last = e.to_string();
                    // Connection lost (the bridge was killed): reconnect and resend.
                    client = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    Ok(())
}

async fn crash_run(ack_mode: &str, mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::new();
    mode.prepare(&sim);
    sim.add_site("acme", "Main", "Australia/Sydney");
    for i in 1..=MESSAGES {
        sim.put_appointment("acme", pending(&format!("A{i:04}")));
    }
    sim.add_client(CLIENT_ID, CLIENT_SECRET, &["acme"]);
    let sim: RunningSimulator = sim.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    // 30% of QUBS calls fail: 10% 503, 10% time out, 5% dropped before and 5% after
    // processing.
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
    if mode.is_strict() {
        sim.add_fault(
            FaultRule::new(Fault::SlowProcessing { ms: 1500 })
                .method("POST")
                .path("/report")
                .probability(0.05),
        );
    }
    // What each mode tells the bridge about QUBS (as `Mode::configure` does).
    let assumptions = match mode {
        Mode::Full => "[qubs.endpoints]\nappointment = true\n",
        Mode::Strict => {
            "[qubs.auth]\nmethod = \"client_secret_basic\"\n[qubs.site_time_zones]\nMain = \"Australia/Sydney\"\n"
        }
    };

    let mllp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[qubs]
base_url = "{base}"
token_url = "{token}"
client_id = "{CLIENT_ID}"
domains = ["acme"]
request_timeout_ms = 1000
[qubs.retry]
initial_backoff_ms = 20
max_backoff_ms = 200
max_elapsed_ms = 3000
max_attempts = 3
{assumptions}
[server]
admin_listen = "127.0.0.1:0"
grpc_listen = "127.0.0.1:0"
[mappings]
dir = "{mappings}"
watch = false
[store]
path = "{outbox}"
[results]
ack_mode = "{ack_mode}"
ack_wait_secs = 5
workers = 16
retry_initial_ms = 50
retry_max_ms = 500
[mllp]
enabled = true
listen = "{mllp}"
domain = "acme"
[telemetry]
log_format = "json"
log_filter = "warn"
"#,
            base = sim.base_url(),
            token = sim.token_url(),
            mappings = concat!(env!("CARGO_MANIFEST_DIR"), "/mappings"),
            outbox = dir.path().join("outbox.db").display(),
        ),
    )
    .unwrap();
    let log = dir.path().join("bridge.log");
    let mut bridge = start_bridge(&config, mllp, &log);
    let target = Arc::new(Mutex::new(Some(bridge.mllp)));
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let todo: Vec<usize> = (1..=MESSAGES).filter(|i| i % SENDERS == s).collect();
        senders.push(tokio::spawn(sender(target.clone(), todo, acked.clone())));
    }

    // Kill it mid-run, without warning.
    let start = Instant::now();
    while acked.lock().unwrap().len() < MESSAGES * 2 / 5 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "too slow before the crash: {} acknowledged; log: {}",
            acked.lock().unwrap().len(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    *target.lock().unwrap() = None;
    bridge.child.kill().unwrap(); // SIGKILL
    bridge.child.wait().unwrap();
    let acked_before_crash = acked.lock().unwrap().len();
    let stored_before_restart = sim.submissions("acme").len();

    let mut bridge = start_bridge(&config, mllp, &log);
    *target.lock().unwrap() = Some(bridge.mllp);
    for s in senders {
        if let Err(e) = s.await.unwrap() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{e}\nbridge log (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
    }
    assert_eq!(acked.lock().unwrap().len(), MESSAGES);

    // Everything acknowledged reaches QUBS (the outbox keeps working through the faults).
    let start = Instant::now();
    loop {
        let reported: HashSet<String> = sim
            .submissions("acme")
            .into_iter()
            .map(|s| s.appointment_id)
            .collect();
        if reported.len() == MESSAGES {
            break;
        }
        if start.elapsed() >= Duration::from_secs(240) {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{} of {MESSAGES} reports in QUBS\nbridge log (last lines, newest first):\n{}",
                reported.len(),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bridge.child.kill().unwrap();
    bridge.child.wait().unwrap();

    // Exactly one stored submission per acknowledged message, with the right content.
    let mut per_appointment: HashMap<String, usize> = HashMap::new();
    for s in sim.submissions("acme") {
        *per_appointment.entry(s.appointment_id.clone()).or_default() += 1;
        let i: usize = s.appointment_id[1..].parse().unwrap();
        let expected = hex(&Sha256::digest(report_text(i).as_bytes()));
        assert_eq!(
            s.report_text_sha256, expected,
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
        assert_eq!(report.revision, 1);
        assert_eq!(report.report_text, report_text(i));
    }
    let faults = sim.requests().iter().filter(|r| r.fault.is_some()).count();
    eprintln!(
        "{ack_mode} ({mode:?}): {acked_before_crash} acknowledged before SIGKILL, {stored_before_restart} in QUBS then; {MESSAGES} reports exactly once after restart; {faults} QUBS calls failed on purpose"
    );
    assert!(faults > 100, "the faults did not fire ({faults})");
    if mode.is_strict() {
        // Retries met a first attempt still in progress, and waited it out.
        let in_progress = sim
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/report") && r.status == 409)
            .count();
        assert!(in_progress > 0, "no retry met a submission in progress");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

in_both_modes!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    sigkill_mid_run_loses_nothing_acknowledged_and_duplicates_nothing_after_store,
    sigkill_mid_run_loses_nothing_acknowledged_and_duplicates_nothing_after_submit,
);

async fn sigkill_mid_run_loses_nothing_acknowledged_and_duplicates_nothing_after_store(mode: Mode) {
    crash_run("after_store", mode).await;
}

async fn sigkill_mid_run_loses_nothing_acknowledged_and_duplicates_nothing_after_submit(
    mode: Mode,
) {
    crash_run("after_submit", mode).await;
}
