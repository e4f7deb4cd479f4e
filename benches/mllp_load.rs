//! Load driver for ORU^R01 over MLLP: round trips (ORU → ACK) per second and their latency,
//! in `after_store` and `after_submit` ack modes, against the QUBS simulator over loopback,
//! on each store: the embedded SQLite file, then PostgreSQL with one and with two replicas.
//!
//! The simulator and the bridges run as child processes; PostgreSQL is a throwaway cluster
//! with `fsync = on` (or `QUBS_BRIDGE_TEST_DATABASE_URL`). For each store and mode fresh
//! bridges (and store) are started; C connections, spread over the replicas, each send
//! distinct results back to back for S seconds. In `after_store` mode the driver then waits
//! for the outbox to drain and reports how fast the workers submitted to QUBS. Reported per
//! run: round trips/s, latency percentiles, each replica's RSS, and database commits/s.
//!
//! ```text
//! cargo bench --bench mllp_load                          # 64 connections, 10 s per mode
//! cargo bench --bench mllp_load -- --connections 32 --seconds 5 --stores sqlite,pg2
//! ```

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use qubs_bridge::mllp::MllpClient;
use support::{Store, arg, drive, memory_mib, metric, start_bridge, start_simulator};
use tokio::sync::Mutex;

const APPOINTMENTS: u32 = 20_000;

struct Options {
    connections: usize,
    seconds: u64,
}

fn options() -> Options {
    Options {
        connections: arg("--connections", 64),
        seconds: arg("--seconds", 10),
    }
}

fn oru(control_id: &str, appointment: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|LOAD|DRIVER|QUBS|ACME|20261127093000||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r\
         PID|1||P1^^^acme^MR\r\
         ORC|RE|{appointment}\r\
         OBR|1|{appointment}||CT^CT Head|||20261127090000|||||||||||||||202611270930|||F|||||||2045671A&Raman&Priya\r\
         OBX|1|TX|||FINDINGS: No acute intracranial abnormality. Ventricles normal.||||||F\r\
         OBX|2|TX|||IMPRESSION: Normal study ({control_id}).||||||F"
    )
    .into_bytes()
}

#[tokio::main]
async fn main() {
    let o = options();
    let stores: String = arg("--stores", "sqlite,pg1,pg2".to_string());
    println!(
        "qubs-bridge MLLP load driver: {} connections, {} s per mode, {} cores, stores {stores}",
        o.connections,
        o.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let sim = start_simulator(APPOINTMENTS);
    let cluster = stores
        .contains("pg")
        .then(|| support::postgres::Cluster::start(true));
    for run in stores.split(',') {
        let replicas = if run == "pg2" { 2 } else { 1 };
        for mode in ["after_store", "after_submit"] {
            let store = match (run, &cluster) {
                ("sqlite", _) => Store::Sqlite,
                (_, Some(cluster)) => Store::postgres(cluster).await,
                _ => unreachable!(),
            };
            let mut bridges = Vec::new();
            let mut dirs = Vec::new();
            for _ in 0..replicas {
                let dir = tempfile::tempdir().expect("temp dir");
                let mut env = store.env();
                env.push(("QUBS_BRIDGE__RESULTS__ACK_MODE", mode));
                bridges.push(start_bridge(&sim, dir.path(), &env).await);
                dirs.push(dir);
            }
            let mut clients = Vec::new();
            for c in 0..o.connections {
                let bridge = &bridges[c % replicas];
                let client =
                    MllpClient::connect(bridge.mllp.as_str(), None, Duration::from_secs(5))
                        .await
                        .expect("MLLP connects");
                clients.push(Arc::new(Mutex::new(client)));
            }
            let clients = Arc::new(clients);
            let commits_before = store.commits().await;
            let phase_name: &'static str = if mode == "after_store" {
                "ORU→ACK after_store"
            } else {
                "ORU→ACK after_submit"
            };
            println!("-- {} x{replicas}, {mode}", store.name());
            let phase = drive(phase_name, o.connections, o.seconds, {
                let clients = clients.clone();
                move |worker, n| {
                    let client = clients[worker].clone();
                    let appointment = format!(
                        "B{:07}",
                        (worker as u64 * 7_919 + n * 104_729) % APPOINTMENTS as u64
                    );
                    let message = oru(&format!("{mode}-{worker:03}-{n:07}"), &appointment);
                    async move {
                        let mut client = client.lock().await;
                        match client.call(&message, Duration::from_secs(60)).await {
                            Ok(ack) => ack.windows(7).any(|w| w == b"\rMSA|AA"),
                            Err(_) => false,
                        }
                    }
                }
            })
            .await;
            let commits = match (commits_before, store.commits().await) {
                (Some(a), Some(b)) => {
                    format!(
                        "{:.0} commits/s",
                        (b - a) as f64 / phase.elapsed.as_secs_f64()
                    )
                }
                _ => "commits/s n/a (SQLite: one fsync per group of writes)".into(),
            };
            phase.print();
            let rss: Vec<String> = bridges
                .iter()
                .map(|b| {
                    format!(
                        "{:.1} (peak {:.1})",
                        memory_mib(b.pid, "VmRSS"),
                        memory_mib(b.pid, "VmHWM")
                    )
                })
                .collect();
            println!(
                "{:<22} RSS per replica MiB: {}   database: {commits}",
                "",
                rss.join(", ")
            );
            if mode == "after_store" {
                // How long the workers take to hand the stored results to QUBS.
                let t = Instant::now();
                let pending = "qubs_bridge_outbox_results{state=\"pending\"}";
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    match metric(&bridges[0], pending).await {
                        Some(p) if p == 0.0 && t.elapsed() > Duration::from_secs(3) => break,
                        _ if t.elapsed() > Duration::from_secs(600) => {
                            println!("outbox did not drain within 10 minutes");
                            break;
                        }
                        _ => {}
                    }
                }
                let mut submitted = 0.0;
                for b in &bridges {
                    submitted += metric(
                        b,
                        "qubs_bridge_outbox_attempts_total{outcome=\"submitted\"}",
                    )
                    .await
                    .unwrap_or(0.0);
                }
                println!(
                    "{:<22} outbox drained: {submitted:.0} reports in QUBS {:.1} s after the phase ended",
                    "",
                    t.elapsed().as_secs_f64()
                );
            }
            drop(clients);
            drop(bridges);
        }
    }
    if let Some(cluster) = cluster {
        cluster.stop(false);
    }
}
