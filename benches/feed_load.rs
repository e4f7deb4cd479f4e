//! Load driver for the HL7 order feed: ORM^O01 messages per second to one MLLP consumer
//! that acknowledges at once, and the bridge's peak memory.
//!
//! The simulator (demo data plus N generated pending appointments) and the bridge run as
//! child processes; the consumer (`support::Consumer`) runs here, on the project's own MLLP
//! listener, answering each message with an AA. Two runs, each with a fresh store:
//!
//! 1. **live**: the consumer is up from the start; the watcher's first poll finds every
//!    order and the destination delivers while the poll goes on. Reported: the time from
//!    the bridge's start to the last ACK, and the consumer's receive rate.
//! 2. **backlog**: the consumer is down while the first poll queues every message; then it
//!    comes up and the queue drains. Reported: the drain rate alone.
//!
//! Both runs on each store: the embedded SQLite file, then PostgreSQL (a throwaway cluster
//! with `fsync = on`) with one and with two replicas (one of which polls and drains, the
//! leader; the other stands by). Database commits/s are PostgreSQL's own count.
//!
//! ```text
//! cargo bench --bench feed_load                         # 10,000 generated orders
//! cargo bench --bench feed_load -- --orders 20000 --comments true --stores pg2
//! ```

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::{
    BridgeProcess, Consumer, Store, arg, memory_mib, metric, start_bridge_with_config,
    start_simulator,
};
use tokio_util::sync::CancellationToken;

fn feed_config(consumer: SocketAddr, comments: bool) -> String {
    format!(
        r#"
[feed]
enabled = true
poll_interval_secs = 3600
include_comments = {comments}

[[feed.destinations]]
name = "bench"
address = "{consumer}"
retry_initial_ms = 100
retry_max_ms = 200
"#
    )
}

async fn wait_for<F: Fn() -> bool>(what: &str, limit: Duration, done: F) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sums a metric over the replicas (each counts what it did itself).
async fn total(bridges: &[BridgeProcess], series: &str) -> f64 {
    let mut sum = 0.0;
    for b in bridges {
        sum += metric(b, series).await.unwrap_or(0.0);
    }
    sum
}

async fn start(
    sim: &support::SimulatorProcess,
    store: &Store,
    replicas: usize,
    config: &str,
) -> (Vec<BridgeProcess>, Vec<tempfile::TempDir>) {
    let mut bridges = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..replicas {
        let dir = tempfile::tempdir().expect("temp dir");
        bridges.push(start_bridge_with_config(sim, dir.path(), &store.env(), config).await);
        dirs.push(dir);
    }
    (bridges, dirs)
}

fn peaks(bridges: &[BridgeProcess]) -> String {
    bridges
        .iter()
        .map(|b| format!("{:.1}", memory_mib(b.pid, "VmHWM")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn commits_per_s(before: Option<i64>, after: Option<i64>, elapsed: Duration) -> String {
    match (before, after) {
        (Some(a), Some(b)) => format!("{:.0} commits/s", (b - a) as f64 / elapsed.as_secs_f64()),
        _ => "commits/s n/a".into(),
    }
}

#[tokio::main]
async fn main() {
    let orders: u32 = arg("--orders", 10_000);
    let comments: bool = arg("--comments", false);
    let stores: String = arg("--stores", "sqlite,pg1,pg2".to_string());
    println!(
        "qubs-bridge order feed load driver: {orders} generated orders (+ demo data), comments {}, {} cores, stores {stores}",
        if comments { "fetched" } else { "not fetched" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let sim = start_simulator(orders);
    let limit = Duration::from_secs(600);
    let cluster = stores
        .contains("pg")
        .then(|| support::postgres::Cluster::start(true));
    for run in stores.split(',') {
        let replicas = if run == "pg2" { 2 } else { 1 };
        let fresh = || async {
            match (run, &cluster) {
                ("sqlite", _) => Store::Sqlite,
                (_, Some(cluster)) => Store::postgres(cluster).await,
                _ => unreachable!(),
            }
        };

        // 1. live
        let store = fresh().await;
        println!("-- {} x{replicas}", store.name());
        let stop = CancellationToken::new();
        let (consumer, addr) =
            Consumer::start("127.0.0.1:0".parse().unwrap(), false, stop.clone()).await;
        let commits_before = store.commits().await;
        let started = Instant::now();
        let (bridges, _dirs) = start(&sim, &store, replicas, &feed_config(addr, comments)).await;
        let expected = loop {
            // The poll's total is known once the events counter reaches the list's size.
            let n = total(&bridges, "qubs_bridge_feed_events_total{kind=\"new\"}").await;
            if n >= orders as f64 {
                break n as u64;
            }
            assert!(
                started.elapsed() < limit,
                "the watcher did not find the orders"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let found = started.elapsed();
        wait_for("all messages acknowledged", limit, || {
            consumer.received.load(Ordering::Relaxed) >= expected
        })
        .await;
        let all = started.elapsed();
        let commits = commits_per_s(commits_before, store.commits().await, all);
        let window =
            consumer.last.lock().unwrap().unwrap() - consumer.first.lock().unwrap().unwrap();
        println!(
            "live      {expected:>7} ORM^O01   all found {:>6.2} s   all ACKed {:>6.2} s after start   {:>8.0} msg/s end to end   {:>8.0} msg/s at the consumer   peak RSS per replica {} MiB   {commits}",
            found.as_secs_f64(),
            all.as_secs_f64(),
            expected as f64 / all.as_secs_f64(),
            expected as f64 / window.as_secs_f64(),
            peaks(&bridges)
        );
        drop(bridges);
        stop.cancel();

        // 2. backlog: the consumer's port is reserved but nobody listens yet.
        let store = fresh().await;
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (bridges, _dirs) = start(&sim, &store, replicas, &feed_config(addr, comments)).await;
        let queued_by = Instant::now();
        loop {
            let depth = total(
                &bridges,
                "qubs_bridge_feed_queue_depth{destination=\"bench\"}",
            )
            .await;
            if depth >= expected as f64 {
                break;
            }
            assert!(queued_by.elapsed() < limit, "the queue did not fill");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let queued_rss: Vec<String> = bridges
            .iter()
            .map(|b| format!("{:.1}", memory_mib(b.pid, "VmRSS")))
            .collect();
        let stop = CancellationToken::new();
        let (consumer, _) = Consumer::start(addr, false, stop.clone()).await;
        let commits_before = store.commits().await;
        let t = Instant::now();
        wait_for("the backlog drained", limit, || {
            consumer.received.load(Ordering::Relaxed) >= expected
        })
        .await;
        let drain = t.elapsed();
        let commits = commits_per_s(commits_before, store.commits().await, drain);
        println!(
            "backlog   {expected:>7} ORM^O01   drained in {:>6.2} s   {:>8.0} msg/s   RSS per replica {} MiB with the queue full, peak {} MiB   {commits}",
            drain.as_secs_f64(),
            expected as f64 / drain.as_secs_f64(),
            queued_rss.join(", "),
            peaks(&bridges)
        );
        drop(bridges);
        stop.cancel();
    }
    if let Some(cluster) = cluster {
        cluster.stop(false);
    }
}
