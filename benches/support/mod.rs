//! What the load drivers share: the simulator and the bridge as child processes (so the
//! bridge's memory is measured on its own), process readings (memory, descriptors, CPU),
//! metrics, a feed consumer on the project's MLLP listener, and a timed call loop.

#![allow(dead_code)]

/// The lock it installs PostgreSQL under.
#[path = "../../tests/it/common/install.rs"]
pub mod install;
/// The tests' PostgreSQL harness (a throwaway cluster, or `QUBS_BRIDGE_TEST_DATABASE_URL`).
#[path = "../../tests/it/common/postgres.rs"]
pub mod postgres;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use qubs_bridge::hl7::{ack, er7};
use qubs_bridge::mllp::{Connection, Handler, Inbound, MllpMetrics, MllpServerSettings};
use tokio_util::sync::CancellationToken;

pub const BIN: &str = env!("CARGO_BIN_EXE_qubs-bridge");
pub const TOKEN: &str = "load-driver-token";
pub const SECRET: &str = "load-driver-secret";

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Reads stdout lines until one contains `marker`.
pub fn read_until(child: &mut Child, marker: &str) -> Vec<String> {
    let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("process ended before printing {marker:?}: {lines:?}");
        }
        let done = line.contains(marker);
        lines.push(line.trim().to_string());
        if done {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in reader.lines() {});
            return lines;
        }
    }
}

pub fn last_word(lines: &[String], marker: &str) -> String {
    lines
        .iter()
        .find(|l| l.contains(marker))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no {marker:?} in {lines:?}"))
        .to_string()
}

/// VmRSS or VmHWM of a process, in MiB.
pub fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Open file descriptors of a process (entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// CPU time (user + system) a process has used so far, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may contain spaces: utime and stime are the
    // 12th and 13th, in USER_HZ ticks (100 per second on Linux).
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// A Prometheus histogram's cumulative buckets `(upper bound in s, count)`: the
/// `{name}_bucket` lines of `text` that carry every one of `labels`, summed over any other
/// label.
pub fn histogram(text: &str, name: &str, labels: &[&str]) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        if !labels.iter().all(|l| line.contains(l)) {
            continue;
        }
        let le = line
            .split("le=\"")
            .nth(1)
            .and_then(|v| v.split('"').next())
            .and_then(|v| match v {
                "+Inf" => Some(f64::INFINITY),
                v => v.parse().ok(),
            });
        let count = line.split_whitespace().last().and_then(|c| c.parse().ok());
        let (Some(le), Some(count)) = (le, count) else {
            continue;
        };
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => buckets.push((le, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The counts of `after` minus those of `before` (an earlier scrape of the same histogram).
pub fn histogram_since(after: &[(f64, f64)], before: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, c)| {
            let was = before.iter().find(|(b, _)| *b == le).map_or(0.0, |b| b.1);
            (le, c - was)
        })
        .collect()
}

/// Upper bound (in ms) of the bucket holding quantile `q` of `buckets`.
pub fn histogram_quantile_ms(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    buckets
        .iter()
        .find(|(_, c)| total > 0.0 && *c >= q * total)
        .map(|(le, _)| le * 1000.0)
}

pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

pub struct Phase {
    pub name: &'static str,
    pub requests: usize,
    pub errors: u64,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
    /// Paced phases: how late the driver itself woke for each call (sorted); a large
    /// value means the driver, not the bridge, fell behind.
    pub wake_lag: Vec<Duration>,
}

impl Phase {
    /// A finished phase that started at `started`: sorts the samples.
    fn new(
        name: &'static str,
        started: Instant,
        errors: &AtomicU64,
        mut latencies: Vec<Duration>,
        mut wake_lag: Vec<Duration>,
    ) -> Phase {
        latencies.sort();
        wake_lag.sort();
        Phase {
            name,
            requests: latencies.len(),
            errors: errors.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
            latencies,
            wake_lag,
        }
    }

    pub fn print(&self) {
        println!(
            "{:<22} {:>9} req {:>10.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   p99.9 {:>7.2} ms   errors {}",
            self.name,
            self.requests,
            self.requests as f64 / self.elapsed.as_secs_f64(),
            percentile(&self.latencies, 0.50),
            percentile(&self.latencies, 0.99),
            percentile(&self.latencies, 0.999),
            self.errors
        );
        if !self.wake_lag.is_empty() {
            println!(
                "  driver woke late for a call by: p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
                percentile(&self.wake_lag, 0.50),
                percentile(&self.wake_lag, 0.99),
                percentile(&self.wake_lag, 1.0)
            );
        }
    }
}

/// Runs `call` from `concurrency` tasks for `seconds`, timing every call.
pub async fn drive<F, Fut>(name: &'static str, concurrency: usize, seconds: u64, call: F) -> Phase
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let call = call.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(16_384);
            let mut n = 0u64;
            while Instant::now() < until {
                let t = Instant::now();
                if !call(worker, n).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                latencies.push(t.elapsed());
                n += 1;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("worker"));
    }
    Phase::new(name, started, &errors, latencies, Vec::new())
}

/// Like [`drive`], but open-loop at `rate` calls/s in all: each of the `concurrency` workers
/// sends on its own fixed schedule (staggered), and a call's latency counts from the moment
/// it was due, so a bridge that falls behind shows it in the latency instead of being
/// offered less load (no coordinated omission). The first `warmup` seconds run at the same
/// rate but are not counted (connections and caches settle).
pub async fn drive_at_rate<F, Fut>(
    name: &'static str,
    concurrency: usize,
    seconds: u64,
    warmup: u64,
    rate: f64,
    call: F,
) -> Phase
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let errors = Arc::new(AtomicU64::new(0));
    let period = Duration::from_secs_f64(concurrency as f64 / rate);
    let launched = Instant::now();
    let started = launched + Duration::from_secs(warmup);
    let until = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let call = call.clone();
        let errors = errors.clone();
        let first = launched + period.mul_f64(worker as f64 / concurrency as f64);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(16_384);
            let mut lag = Vec::with_capacity(16_384);
            let mut n = 0u64;
            loop {
                let due = first + period.mul_f64(n as f64);
                if due >= until {
                    break;
                }
                let ready = Instant::now();
                tokio::time::sleep_until(due.into()).await;
                // Only the wake-up itself: a worker still busy with its previous call
                // (then `due` has passed) is the bridge's delay, not the driver's.
                let woke = due.max(ready).elapsed();
                let ok = call(worker, n).await;
                if due >= started {
                    lag.push(woke);
                    latencies.push(due.elapsed());
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
            (latencies, lag)
        }));
    }
    let (mut latencies, mut wake_lag) = (Vec::new(), Vec::new());
    for t in tasks {
        let (l, w) = t.await.expect("worker");
        latencies.extend(l);
        wake_lag.extend(w);
    }
    Phase::new(name, started, &errors, latencies, wake_lag)
}

/// `qubs-bridge simulator` with generated appointments, as a child process.
pub struct SimulatorProcess {
    _proc: Proc,
    pub base_url: String,
    pub token_url: String,
}

impl SimulatorProcess {
    /// The `/_simulator` control endpoints' base URL.
    pub fn control(&self) -> String {
        format!(
            "{}/_simulator",
            self.base_url.trim_end_matches("/integrations/v1")
        )
    }
}

pub fn start_simulator(appointments: u32) -> SimulatorProcess {
    let mut sim = Command::new(BIN)
        .args([
            "simulator",
            "--port",
            "0",
            "--appointments",
            &appointments.to_string(),
        ])
        .env("QUBS_SIMULATOR_CLIENT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("simulator starts");
    let lines = read_until(&mut sim, "token URL");
    SimulatorProcess {
        _proc: Proc(sim),
        base_url: last_word(&lines, "base URL"),
        token_url: last_word(&lines, "token URL"),
    }
}

/// `qubs-bridge serve` against a simulator, as a child process, ready to serve.
pub struct BridgeProcess {
    _proc: Proc,
    pub pid: u32,
    /// `http://host:port` of the gRPC API.
    pub grpc: String,
    /// The admin endpoint's `/readyz` URL.
    pub readyz: String,
    /// The MLLP listener's address.
    pub mllp: String,
}

impl BridgeProcess {
    /// The admin endpoint's base URL.
    pub fn admin(&self) -> String {
        self.readyz.trim_end_matches("/readyz").to_string()
    }
}

/// Which store the bridges of a run use.
pub enum Store {
    Sqlite,
    /// One database shared by the replicas; `env` points a bridge at it.
    Postgres {
        db: postgres::TestDb,
        env: Vec<(String, String)>,
    },
}

impl Store {
    pub fn name(&self) -> &'static str {
        match self {
            Store::Sqlite => "sqlite",
            Store::Postgres { .. } => "postgresql",
        }
    }

    /// A fresh PostgreSQL database on `cluster`, migrated.
    pub async fn postgres(cluster: &postgres::Cluster) -> Store {
        let db = cluster.database().await;
        db.migrate().await;
        let env = db.env(30);
        Store::Postgres { db, env }
    }

    /// Transactions committed in the database so far (PostgreSQL's statistics).
    pub async fn commits(&self) -> Option<i64> {
        let Store::Postgres { db, .. } = self else {
            return None;
        };
        let client = db.connect().await;
        // The statistics are sent at transaction end and may lag a little.
        client
            .query_one(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .ok()
            .map(|r| r.get(0))
    }

    pub fn env(&self) -> Vec<(&str, &str)> {
        match self {
            Store::Sqlite => Vec::new(),
            Store::Postgres { env, .. } => {
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
            }
        }
    }
}

/// Starts the bridge with its store in `dir`; `env` adds `QUBS_BRIDGE__…` overrides.
pub async fn start_bridge(
    sim: &SimulatorProcess,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> BridgeProcess {
    start_bridge_with_config(sim, dir, env, "").await
}

/// As [`start_bridge`], with `extra` appended to the configuration file (TOML sections).
pub async fn start_bridge_with_config(
    sim: &SimulatorProcess,
    dir: &std::path::Path,
    env: &[(&str, &str)],
    extra: &str,
) -> BridgeProcess {
    start_bridge_logging(sim, dir, env, extra, Stdio::inherit()).await
}

/// As [`start_bridge_with_config`], with the bridge's log (stderr) sent to `log`.
pub async fn start_bridge_logging(
    sim: &SimulatorProcess,
    dir: &std::path::Path,
    env: &[(&str, &str)],
    extra: &str,
    log: Stdio,
) -> BridgeProcess {
    let config = dir.join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[qubs]
base_url = "{base_url}"
token_url = "{token_url}"
client_id = "qubs-bridge-demo"
domains = ["acme"]
page_size = 500

[server]
admin_listen = "127.0.0.1:0"
grpc_listen = "127.0.0.1:0"
qubs_probe_interval_secs = 3600

[[grpc.clients]]
name = "load-driver"
token_sha256 = "{token}"
domains = ["acme"]

[store]
path = "{outbox}"

[mllp]
listen = "127.0.0.1:0"

[telemetry]
log_filter = "warn"
{extra}
"#,
            base_url = sim.base_url,
            token_url = sim.token_url,
            token = qubs_bridge::grpc::auth::hash_token(TOKEN),
            outbox = dir.join("bridge.db").display(),
        ),
    )
    .expect("config written");
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--config"])
        .arg(&config)
        .env("QUBS_BRIDGE__QUBS__CLIENT_SECRET", SECRET)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(log);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut bridge = command.spawn().expect("bridge starts");
    let lines = read_until(&mut bridge, "admin endpoint");
    let pid = bridge.id();
    let process = BridgeProcess {
        _proc: Proc(bridge),
        pid,
        grpc: format!("http://{}", last_word(&lines, "gRPC API on")),
        readyz: last_word(&lines, "admin endpoint"),
        mllp: last_word(&lines, "MLLP listener"),
    };
    let started = Instant::now();
    while reqwest::get(&process.readyz)
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "bridge never ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    process
}

/// A metric's value from the admin endpoint's `/metrics` (first series whose line starts
/// with `series`).
pub async fn metric(bridge: &BridgeProcess, series: &str) -> Option<f64> {
    metric_in(&metrics_text(bridge).await?, series)
}

/// The admin endpoint's `/metrics` text, to read several series from one scrape.
pub async fn metrics_text(bridge: &BridgeProcess) -> Option<String> {
    reqwest::get(format!("{}/metrics", bridge.admin()))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The value of the first series in `text` whose line starts with `series`.
pub fn metric_in(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// An order feed consumer: acknowledges every message with an AA at once, counts them,
/// notes when the first and last arrived and, when asked to, keeps the last message per
/// appointment (ORC-2.1).
#[derive(Default)]
pub struct Consumer {
    pub received: AtomicU64,
    pub first: std::sync::Mutex<Option<Instant>>,
    pub last: std::sync::Mutex<Option<Instant>>,
    keep_last: bool,
    latest: std::sync::Mutex<HashMap<String, String>>,
}

impl Consumer {
    /// Listens on `addr` (port 0: any free one) until `stop`; returns the bound address.
    pub async fn start(
        addr: SocketAddr,
        keep_last: bool,
        stop: CancellationToken,
    ) -> (Arc<Consumer>, SocketAddr) {
        let consumer = Arc::new(Consumer {
            keep_last,
            ..Default::default()
        });
        let settings = MllpServerSettings {
            listen: addr,
            ..Default::default()
        };
        let server = qubs_bridge::mllp::start(
            &settings,
            consumer.clone(),
            Arc::new(MllpMetrics::default()),
            stop,
        )
        .await
        .expect("consumer listens");
        (consumer, server.addr)
    }

    /// The last message received for an appointment (only with `keep_last`).
    pub fn latest(&self, appointment_id: &str) -> Option<String> {
        self.latest.lock().unwrap().get(appointment_id).cloned()
    }
}

impl Handler for Consumer {
    async fn handle(&self, inbound: Inbound, conn: &Connection) {
        let Inbound::Message(bytes) = inbound else {
            return;
        };
        let text = er7::decode_bytes(&bytes);
        let header = ack::IncomingHeader::recover(&text);
        let reply = ack::build(&header, ack::AckCode::AA, None, &jiff::ZonedDateTime::now());
        let _ = conn.reply(reply.into_bytes()).await;
        if self.keep_last {
            let appointment = text
                .split('\r')
                .find(|s| s.starts_with("ORC|"))
                .and_then(|s| s.split('|').nth(2))
                .and_then(|f| f.split('^').next())
                .unwrap_or_default()
                .to_string();
            self.latest
                .lock()
                .unwrap()
                .insert(appointment, text.to_string());
        }
        let now = Instant::now();
        self.first.lock().unwrap().get_or_insert(now);
        *self.last.lock().unwrap() = Some(now);
        self.received.fetch_add(1, Ordering::Relaxed);
    }
}

/// The value after `--name` on the command line, parsed; `default` when absent or invalid.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}
