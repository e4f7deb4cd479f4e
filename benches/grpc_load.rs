//! Load driver for the gRPC API, over loopback, against the QUBS simulator.
//!
//! Starts two child processes — `qubs-bridge simulator` with N generated appointments and
//! `qubs-bridge serve` pointed at it — so that the bridge's memory is measured on its own,
//! then drives the bridge with the real tonic client:
//!
//! 1. idle RSS after start;
//! 2. StreamPendingOrders over every appointment (FHIR ServiceRequest output): orders/s and
//!    the bridge's peak RSS;
//! 3. GetOrder (FHIR ServiceRequest + HL7 ORM^O01) at C concurrent calls for S seconds;
//! 4. SubmitOru (distinct messages) at C concurrent calls for S seconds;
//!
//! printing requests/s and p50/p99 latency.
//!
//! ```text
//! cargo bench --bench grpc_load                       # 100,000 appointments, 64 calls, 10 s
//! cargo bench --bench grpc_load -- --appointments 20000 --concurrency 32 --seconds 5
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use qubs_bridge::grpc::pb::order_service_client::OrderServiceClient;
use qubs_bridge::grpc::pb::result_service_client::ResultServiceClient;
use qubs_bridge::grpc::pb::{
    GetOrderRequest, OutputFormat, StreamPendingOrdersRequest, SubmitOruRequest,
};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_qubs-bridge");
const TOKEN: &str = "load-driver-token";
const SECRET: &str = "load-driver-secret";

struct Options {
    appointments: u32,
    concurrency: usize,
    seconds: u64,
}

fn options() -> Options {
    let mut o = Options {
        appointments: 100_000,
        concurrency: 64,
        seconds: 10,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let value = args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (args[i].as_str(), value) {
            ("--appointments", Some(v)) => o.appointments = v as u32,
            ("--concurrency", Some(v)) => o.concurrency = v as usize,
            ("--seconds", Some(v)) => o.seconds = v,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Reads stdout lines until one contains `marker`.
fn read_until(child: &mut Child, marker: &str) -> Vec<String> {
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

fn last_word(lines: &[String], marker: &str) -> String {
    lines
        .iter()
        .find(|l| l.contains(marker))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no {marker:?} in {lines:?}"))
        .to_string()
}

/// VmRSS or VmHWM of a process, in MiB.
fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

struct Phase {
    name: &'static str,
    requests: usize,
    errors: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn print(&self) {
        println!(
            "{:<22} {:>9} req {:>10.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   errors {}",
            self.name,
            self.requests,
            self.requests as f64 / self.elapsed.as_secs_f64(),
            percentile(&self.latencies, 0.50),
            percentile(&self.latencies, 0.99),
            self.errors
        );
    }
}

/// Runs `call` from `concurrency` tasks for `seconds`, timing every call.
async fn drive<F, Fut>(name: &'static str, concurrency: usize, seconds: u64, call: F) -> Phase
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
    let elapsed = started.elapsed();
    latencies.sort();
    Phase {
        name,
        requests: latencies.len(),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        latencies,
    }
}

fn oru(control_id: &str, appointment: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|LOAD|DRIVER|QUBS|ACME|20261127093000||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r\
         PID|1||P1^^^acme^MR\r\
         ORC|RE|{appointment}\r\
         OBR|1|{appointment}||CT^CT Head|||20261127090000|||||||||||||||202611270930|||F|||||||2045671A&Raman&Priya\r\
         OBX|1|TX|||FINDINGS: No acute intracranial abnormality. Ventricles normal.||||||F\r\
         OBX|2|TX|||IMPRESSION: Normal study.||||||F\r"
    )
    .into_bytes()
}

#[tokio::main]
async fn main() {
    let o = options();
    println!(
        "qubs-bridge gRPC load driver: {} appointments, {} concurrent calls, {} s per phase, {} cores",
        o.appointments,
        o.concurrency,
        o.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut sim = Command::new(BIN)
        .args([
            "simulator",
            "--port",
            "0",
            "--appointments",
            &o.appointments.to_string(),
        ])
        .env("QUBS_SIMULATOR_CLIENT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("simulator starts");
    let lines = read_until(&mut sim, "token URL");
    let _sim = Proc(sim);
    let base_url = last_word(&lines, "base URL");
    let token_url = last_word(&lines, "token URL");

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("bridge.toml");
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
token_sha256 = "{}"
domains = ["acme"]

[telemetry]
log_filter = "warn"
"#,
            qubs_bridge::grpc::auth::hash_token(TOKEN)
        ),
    )
    .expect("config written");
    let mut bridge = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("QUBS_BRIDGE__QUBS__CLIENT_SECRET", SECRET)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("bridge starts");
    let lines = read_until(&mut bridge, "admin endpoint");
    let bridge_pid = bridge.id();
    let _bridge = Proc(bridge);
    let grpc = format!("http://{}", last_word(&lines, "gRPC API on"));
    let readyz = last_word(&lines, "admin endpoint");
    let started = Instant::now();
    while reqwest::get(&readyz)
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
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = memory_mib(bridge_pid, "VmRSS");
    println!("bridge idle RSS        {idle:.1} MiB");

    let channel = Channel::from_shared(grpc)
        .unwrap()
        .connect()
        .await
        .expect("gRPC connects");

    // Stream every order.
    let mut orders = OrderServiceClient::new(channel.clone());
    let t = Instant::now();
    let mut stream = orders
        .stream_pending_orders(authed(StreamPendingOrdersRequest {
            domain: "acme".into(),
            formats: vec![OutputFormat::FhirServiceRequest as i32],
            page_size: 500,
            include_comments: false,
        }))
        .await
        .expect("stream starts")
        .into_inner();
    let mut streamed = 0usize;
    let mut peak_sampled = 0f64;
    while let Some(item) = stream.next().await {
        if item.expect("stream item").order.is_some() {
            streamed += 1;
        }
        if streamed.is_multiple_of(5_000) {
            peak_sampled = peak_sampled.max(memory_mib(bridge_pid, "VmRSS"));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "StreamPendingOrders    {streamed:>9} orders in {secs:.1} s = {:.0} orders/s; bridge peak RSS {:.1} MiB (VmHWM)",
        streamed as f64 / secs,
        memory_mib(bridge_pid, "VmHWM").max(peak_sampled)
    );

    let ids = o.appointments.max(1) as u64;
    let get = drive("GetOrder (FHIR+ORM)", o.concurrency, o.seconds, {
        let channel = channel.clone();
        move |worker, n| {
            let mut client = OrderServiceClient::new(channel.clone());
            let id = format!("B{:07}", (worker as u64 * 7919 + n * 104_729) % ids);
            async move {
                client
                    .get_order(authed(GetOrderRequest {
                        domain: "acme".into(),
                        appointment_id: id,
                        formats: vec![
                            OutputFormat::FhirServiceRequest as i32,
                            OutputFormat::Hl7OrmO01 as i32,
                        ],
                    }))
                    .await
                    .is_ok()
            }
        }
    })
    .await;
    get.print();

    let submit = drive("SubmitOru", o.concurrency, o.seconds, {
        let channel = channel.clone();
        move |worker, n| {
            let mut client = ResultServiceClient::new(channel.clone());
            let id = format!("B{:07}", (worker as u64 * 6151 + n * 7_919) % ids);
            let message = oru(&format!("L{worker:03}N{n:07}"), &id);
            async move {
                match client
                    .submit_oru(authed(SubmitOruRequest {
                        message,
                        domain: "acme".into(),
                    }))
                    .await
                {
                    Ok(r) => r.into_inner().ack_code == "AA",
                    Err(_) => false,
                }
            }
        }
    })
    .await;
    submit.print();
    println!(
        "bridge RSS now         {:.1} MiB, peak over the run {:.1} MiB",
        memory_mib(bridge_pid, "VmRSS"),
        memory_mib(bridge_pid, "VmHWM")
    );
}
