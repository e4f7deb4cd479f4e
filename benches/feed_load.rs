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
//! ```text
//! cargo bench --bench feed_load                         # 10,000 generated orders
//! cargo bench --bench feed_load -- --orders 20000 --comments true
//! ```

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::{Consumer, arg, memory_mib, metric, start_bridge_with_config, start_simulator};
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

#[tokio::main]
async fn main() {
    let orders: u32 = arg("--orders", 10_000);
    let comments: bool = arg("--comments", false);
    println!(
        "qubs-bridge order feed load driver: {orders} generated orders (+ demo data), comments {}, {} cores",
        if comments { "fetched" } else { "not fetched" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let sim = start_simulator(orders);
    let limit = Duration::from_secs(600);

    // 1. live
    let stop = CancellationToken::new();
    let (consumer, addr) =
        Consumer::start("127.0.0.1:0".parse().unwrap(), false, stop.clone()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let bridge =
        start_bridge_with_config(&sim, dir.path(), &[], &feed_config(addr, comments)).await;
    let expected = loop {
        // The poll's total is known once the events counter stops growing at the list's size.
        if let Some(n) = metric(&bridge, "qubs_bridge_feed_events_total{kind=\"new\"}").await
            && n >= orders as f64
        {
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
    let total = started.elapsed();
    let window = consumer.last.lock().unwrap().unwrap() - consumer.first.lock().unwrap().unwrap();
    println!(
        "live      {expected:>7} ORM^O01   all found {:>6.2} s   all ACKed {:>6.2} s after start   {:>8.0} msg/s end to end   {:>8.0} msg/s at the consumer   bridge peak RSS {:.1} MiB",
        found.as_secs_f64(),
        total.as_secs_f64(),
        expected as f64 / total.as_secs_f64(),
        expected as f64 / window.as_secs_f64(),
        memory_mib(bridge.pid, "VmHWM")
    );
    drop(bridge);
    stop.cancel();

    // 2. backlog: the consumer's port is reserved but nobody listens yet.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let bridge =
        start_bridge_with_config(&sim, dir.path(), &[], &feed_config(addr, comments)).await;
    let queued_by = Instant::now();
    loop {
        if let Some(n) = metric(
            &bridge,
            "qubs_bridge_feed_queue_depth{destination=\"bench\"}",
        )
        .await
            && n >= expected as f64
        {
            break;
        }
        assert!(queued_by.elapsed() < limit, "the queue did not fill");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let queued_rss = memory_mib(bridge.pid, "VmRSS");
    let stop = CancellationToken::new();
    let (consumer, _) = Consumer::start(addr, false, stop.clone()).await;
    let t = Instant::now();
    wait_for("the backlog drained", limit, || {
        consumer.received.load(Ordering::Relaxed) >= expected
    })
    .await;
    let drain = t.elapsed();
    println!(
        "backlog   {expected:>7} ORM^O01   drained in {:>6.2} s   {:>8.0} msg/s   bridge RSS {:.1} MiB with the queue full, peak {:.1} MiB",
        drain.as_secs_f64(),
        expected as f64 / drain.as_secs_f64(),
        queued_rss,
        memory_mib(bridge.pid, "VmHWM")
    );
    stop.cancel();
}
