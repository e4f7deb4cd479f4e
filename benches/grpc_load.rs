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
//! 4. SubmitOru (distinct messages) at C concurrent calls for S seconds, as fast as they go;
//! 5. SubmitOru paced at R calls/s in all over the same C streams (open loop: latency counts
//!    from when a call was due, so falling behind shows);
//!
//! printing requests/s and p50/p99 latency as the driver sees them, and the bridge's own
//! latency histogram for the same calls.
//!
//! ```text
//! cargo bench --bench grpc_load                       # 100,000 appointments, 64 calls, 10 s
//! cargo bench --bench grpc_load -- --appointments 20000 --concurrency 32 --seconds 5
//! cargo bench --bench grpc_load -- --ack-mode after_store   # SubmitOru answered once stored
//! cargo bench --bench grpc_load -- --connections 4          # SubmitOru over 4 HTTP/2 connections
//! cargo bench --bench grpc_load -- --submit-rate 3000       # the paced phase at 3,000/s (0: skip)
//! ```

mod support;

use std::time::Instant;

use futures::StreamExt;
use qubs_bridge::grpc::pb::order_service_client::OrderServiceClient;
use qubs_bridge::grpc::pb::result_service_client::ResultServiceClient;
use qubs_bridge::grpc::pb::{
    GetOrderRequest, OutputFormat, StreamPendingOrdersRequest, SubmitOruRequest,
};
use tonic::transport::Channel;

use support::{
    TOKEN, arg, drive, drive_at_rate, histogram, histogram_quantile_ms, histogram_since,
    memory_mib, metric, metrics_text, start_bridge, start_simulator,
};

struct Options {
    appointments: u32,
    concurrency: usize,
    seconds: u64,
    /// `results.ack_mode` of the bridge: `after_submit` (default) or `after_store`.
    ack_mode: String,
    /// HTTP/2 connections the calls are spread over (default 1).
    connections: usize,
    /// SubmitOru calls/s in all for the paced phase (0: skip it).
    submit_rate: f64,
}

fn options() -> Options {
    Options {
        appointments: arg("--appointments", 100_000),
        concurrency: arg("--concurrency", 64),
        seconds: arg("--seconds", 10),
        ack_mode: arg("--ack-mode", "after_submit".to_string()),
        connections: arg("--connections", 1usize).max(1),
        submit_rate: arg("--submit-rate", 5000.0),
    }
}

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
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

/// The bridge's own view of a method's latency since `before` (its `grpc_request_seconds`
/// histogram: from the call arriving to the answer handed to the transport). What the driver
/// measures beyond it is the transport and the driver itself, on the same two cores.
async fn server_side(bridge: &support::BridgeProcess, method: &str, before: &[(f64, f64)]) {
    let buckets = histogram_since(&rpc_histogram(bridge, method).await, before);
    let q = |q| histogram_quantile_ms(&buckets, q).map_or("?".to_string(), |ms| format!("{ms}"));
    println!(
        "  {method} in the bridge (bucket bounds of its histogram): p50 <= {} ms   p99 <= {} ms   p99.9 <= {} ms",
        q(0.50),
        q(0.99),
        q(0.999)
    );
}

async fn rpc_histogram(bridge: &support::BridgeProcess, method: &str) -> Vec<(f64, f64)> {
    let text = metrics_text(bridge).await.unwrap_or_default();
    histogram(
        &text,
        "qubs_bridge_grpc_request_seconds",
        &[&format!("method=\"{method}\"")],
    )
}

#[tokio::main]
async fn main() {
    let o = options();
    println!(
        "qubs-bridge gRPC load driver: {} appointments, {} concurrent calls, {} s per phase, ack mode {}, SubmitOru over {} connection(s), {} cores",
        o.appointments,
        o.concurrency,
        o.seconds,
        o.ack_mode,
        o.connections,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let sim = start_simulator(o.appointments);
    let dir = tempfile::tempdir().expect("temp dir");
    let bridge = start_bridge(
        &sim,
        dir.path(),
        &[("QUBS_BRIDGE__RESULTS__ACK_MODE", o.ack_mode.as_str())],
    )
    .await;
    let bridge_pid = bridge.pid;
    let grpc = bridge.grpc.clone();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
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
    server_side(&bridge, "GetOrder", &[]).await;

    let mut channels = vec![channel.clone()];
    for _ in 1..o.connections {
        channels.push(
            Channel::from_shared(bridge.grpc.clone())
                .unwrap()
                .connect()
                .await
                .expect("gRPC connects"),
        );
    }
    // Each call a distinct message (control id from phase, worker and sequence number).
    let submit_call = |phase: char| {
        let channels = channels.clone();
        move |worker: usize, n: u64| {
            let mut client = ResultServiceClient::new(channels[worker % channels.len()].clone());
            let id = format!("B{:07}", (worker as u64 * 6151 + n * 7_919) % ids);
            let message = oru(&format!("L{phase}{worker:03}N{n:07}"), &id);
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
    };
    let before = rpc_histogram(&bridge, "SubmitOru").await;
    let submit = drive("SubmitOru", o.concurrency, o.seconds, submit_call('C')).await;
    submit.print();
    server_side(&bridge, "SubmitOru", &before).await;
    if o.submit_rate > 0.0 {
        // Start from a steady state: the reports the unpaced phase queued are submitted to
        // QUBS first (the outbox then only has to keep up with the paced calls).
        if o.ack_mode == "after_store" {
            let t = Instant::now();
            let pending = r#"qubs_bridge_outbox_results{state="pending"}"#;
            while metric(&bridge, pending).await.is_none_or(|n| n > 0.0) {
                assert!(t.elapsed().as_secs() < 600, "the outbox did not drain");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            println!(
                "  outbox drained to QUBS {:.1} s after the phase ended",
                t.elapsed().as_secs_f64()
            );
        }
        let before = rpc_histogram(&bridge, "SubmitOru").await;
        let paced = drive_at_rate(
            "SubmitOru paced",
            o.concurrency,
            o.seconds,
            1,
            o.submit_rate,
            submit_call('R'),
        )
        .await;
        paced.print();
        server_side(&bridge, "SubmitOru", &before).await;
    }
    println!(
        "bridge RSS now         {:.1} MiB, peak over the run {:.1} MiB",
        memory_mib(bridge_pid, "VmRSS"),
        memory_mib(bridge_pid, "VmHWM")
    );
}
