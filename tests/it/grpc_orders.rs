//! The gRPC OrderService over loopback with the real tonic client, wired to the simulator;
//! the scenarios that read QUBS run against today's simulator and the strict one.

use crate::common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{GRPC_TOKEN, Mode, authed, in_both_modes, start_bridge, with_pending};
use futures::StreamExt;
use qubs_bridge::grpc::pb::order_service_client::OrderServiceClient;
use qubs_bridge::grpc::pb::{
    GetAttachmentContentRequest, GetOrderRequest, ListPendingOrdersRequest, OutputFormat,
    StreamPendingOrdersRequest,
};
use qubs_bridge::simulator::{Fault, FaultRule, Simulator};
use serde_json::{Map, Value, json};
use tonic::Code;

fn list(domain: &str, size: u32, token: &str) -> ListPendingOrdersRequest {
    ListPendingOrdersRequest {
        domain: domain.into(),
        page_size: size,
        page_token: token.into(),
        formats: vec![OutputFormat::SourceJson as i32],
        include_comments: false,
    }
}

in_both_modes!(
    list_pending_orders_pages_with_tokens,
    every_auth_failure_has_its_code,
    get_order_carries_comments_alerts_and_fresh_attachment_urls,
    qubs_error_classes_map_to_grpc_codes_with_ids_in_trailers,
    refused_client_credentials_are_unavailable_and_flip_health,
    the_client_deadline_bounds_the_qubs_calls,
    streaming_ten_thousand_orders_stops_paging_when_cancelled,
    attachment_content_streams_in_chunks,
    metrics_count_rpcs_and_qubs_calls,
    gzip_size_limits_and_mapping_failures,
);

async fn list_pending_orders_pages_with_tokens(mode: Mode) {
    let bridge = mode.start_bridge(with_pending(25), &[]).await;
    let mut client = OrderServiceClient::new(bridge.channel().await);
    let mut token = String::new();
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut empty_with_token = 0;
    loop {
        let page = client
            .list_pending_orders(authed(list("acme", 10, &token), GRPC_TOKEN))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        for order in &page.orders {
            assert_eq!(order.domain, "acme");
            assert_eq!(order.outputs.len(), 1);
            let source: Value = serde_json::from_str(&order.outputs[0].content).unwrap();
            assert_eq!(
                source["appointment"]["appointmentId"],
                order.appointment_id.as_str()
            );
            assert_eq!(source["site"]["timeZone"], "Australia/Sydney");
            assert_eq!(order.outputs[0].content_type, "application/json");
            ids.push(order.appointment_id.clone());
        }
        if page.next_page_token.is_empty() {
            break;
        }
        if page.orders.is_empty() {
            empty_with_token += 1;
        }
        token = page.next_page_token;
    }
    if mode.is_strict() {
        // DynamoDB-style: short and empty pages that still carry a token.
        assert!(pages > 3 && empty_with_token > 0, "{pages} pages");
    } else {
        assert_eq!(pages, 3);
    }
    assert_eq!(ids.len(), 25);
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 25, "each order once");
}

async fn every_auth_failure_has_its_code(mode: Mode) {
    let sim = with_pending(1);
    sim.add_site("globex", "Other", "Europe/London");
    let bridge = mode
        .start_bridge(sim, &[("QUBS_BRIDGE__QUBS__DOMAINS", "acme")])
        .await;
    let mut client = OrderServiceClient::new(bridge.channel().await);
    let e = client
        .list_pending_orders(tonic::Request::new(list("acme", 0, "")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains("missing credentials"),
        "{}",
        e.message()
    );
    let e = client
        .list_pending_orders(authed(list("acme", 0, ""), "not-a-token"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut bad_scheme = tonic::Request::new(list("acme", 0, ""));
    bad_scheme
        .metadata_mut()
        .insert("authorization", "Basic Zm9vOmJhcg==".parse().unwrap());
    assert_eq!(
        client
            .list_pending_orders(bad_scheme)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let e = client
        .list_pending_orders(authed(list("globex", 0, ""), GRPC_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = client
        .get_order(authed(
            GetOrderRequest {
                domain: "globex".into(),
                appointment_id: "A0001".into(),
                formats: vec![],
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        bridge
            .sim
            .requests()
            .iter()
            .all(|r| !r.path.contains("globex")),
        "refused calls never reach QUBS"
    );
}

async fn get_order_carries_comments_alerts_and_fresh_attachment_urls(mode: Mode) {
    let sim = with_pending(1);
    sim.add_comment("acme", "A0001", json!({"guid": "c1", "commentType": "AA", "commentText": "contrast allergy", "isAlert": true}));
    sim.add_comment(
        "acme",
        "A0001",
        json!({"guid": "c2", "commentType": "AC", "commentText": "prior CD"}),
    );
    let mut meta = Map::new();
    meta.insert("guid".into(), json!("att-1"));
    meta.insert("fileName".into(), json!("referral.pdf"));
    sim.add_attachment(
        "acme",
        "A0001",
        meta,
        "application/pdf",
        Bytes::from_static(b"%PDF-1.4"),
    );
    let bridge = mode.start_bridge(sim, &[]).await;
    let mut client = OrderServiceClient::new(bridge.channel().await);
    let order = client
        .get_order(authed(
            GetOrderRequest {
                domain: "acme".into(),
                appointment_id: "A0001".into(),
                formats: vec![OutputFormat::SourceJson as i32],
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(order.status, "PENDING REPORTING");
    assert_eq!(order.comments.len(), 2);
    assert!(order.comments[0].is_alert && !order.comments[1].is_alert);
    assert_eq!(order.attachments.len(), 1);
    assert!(order.attachments[0].url.starts_with("http://127.0.0.1"));
    assert!(!order.attachments[0].url_expires_at_utc.is_empty());
    let source: Value = serde_json::from_str(&order.outputs[0].content).unwrap();
    assert_eq!(source["comments"].as_array().unwrap().len(), 2);
}

async fn get_order_error(bridge: &common::Bridge, id: &str) -> tonic::Status {
    OrderServiceClient::new(bridge.channel().await)
        .get_order(authed(
            GetOrderRequest {
                domain: "acme".into(),
                appointment_id: id.into(),
                formats: vec![OutputFormat::SourceJson as i32],
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap_err()
}

async fn qubs_error_classes_map_to_grpc_codes_with_ids_in_trailers(mode: Mode) {
    let sim = with_pending(2);
    let bridge = mode
        .start_bridge(sim, &[("QUBS_BRIDGE__QUBS__RETRY__MAX_ATTEMPTS", "1")])
        .await;
    let e = get_order_error(&bridge, "A4040").await;
    assert_eq!(e.code(), Code::NotFound);
    let e = if mode.is_strict() {
        // Never listed as pending: the bridge's own answer, no QUBS call to name.
        assert!(
            e.message().contains("not in QUBS's pending reporting list"),
            "{}",
            e.message()
        );
        // One that was listed and has left the list since: QUBS's 404 for its comments.
        bridge
            .sim
            .set_appointment_status("acme", "A0002", "FINALISED");
        get_order_error(&bridge, "A0002").await
    } else {
        e
    };
    assert_eq!(e.code(), Code::NotFound);
    let request_id = e
        .metadata()
        .get("qubs-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        e.metadata()
            .get("x-correlation-id")
            .unwrap()
            .to_str()
            .unwrap(),
        request_id,
        "QUBS echoes our correlation id as requestId"
    );
    assert!(
        bridge
            .sim
            .requests()
            .iter()
            .any(|r| r.correlation_id == request_id)
    );

    // The first QUBS call GetOrder makes for A0001: the appointment itself where the GET
    // is used; otherwise its comments (its attachments are read alongside).
    let first_call = if mode.is_strict() {
        "/appointments/A0001/comments"
    } else {
        "/appointments/A0001"
    };
    for (status, code) in [
        (400, Code::InvalidArgument),
        (403, Code::FailedPrecondition),
        (409, Code::Aborted),
        (429, Code::ResourceExhausted),
        (500, Code::Unavailable),
        (503, Code::Unavailable),
    ] {
        // A 403 gets one fresh token before it is final.
        let times = if status == 403 { 2 } else { 1 };
        bridge.sim.add_fault(
            FaultRule::new(Fault::Status {
                status,
                retry_after: None,
            })
            .path(first_call)
            .times(times),
        );
        let e = get_order_error(&bridge, "A0001").await;
        assert_eq!(e.code(), code, "QUBS {status}: {}", e.message());
        assert!(
            e.metadata().get("qubs-request-id").is_some(),
            "QUBS {status}"
        );
    }
    bridge.sim.rotate_signing_key();
    bridge.sim.add_fault(
        FaultRule::new(Fault::Status {
            status: 401,
            retry_after: None,
        })
        .path(first_call)
        .times(2),
    );
    let e = get_order_error(&bridge, "A0001").await;
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.message().contains("refused the bridge's credentials"),
        "{}",
        e.message()
    );
}

async fn refused_client_credentials_are_unavailable_and_flip_health(mode: Mode) {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let bridge = mode
        .start_bridge(
            with_pending(1),
            &[
                ("QUBS_BRIDGE__QUBS__CLIENT_SECRET", "wrong-secret"),
                ("QUBS_BRIDGE__SERVER__QUBS_PROBE_INTERVAL_SECS", "1"),
            ],
        )
        .await;
    let e = get_order_error(&bridge, "A0001").await;
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.message().contains("client credentials"),
        "{}",
        e.message()
    );
    let mut health = HealthClient::new(bridge.channel().await);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        if status == ServingStatus::NotServing {
            break;
        }
        assert!(Instant::now() < deadline, "health never flipped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn the_client_deadline_bounds_the_qubs_calls(mode: Mode) {
    let sim = with_pending(1);
    sim.add_fault(FaultRule::new(Fault::Latency { ms: 3000 }).path("/appointments/A0001"));
    let bridge = mode.start_bridge(sim, &[]).await;
    let mut request = authed(
        GetOrderRequest {
            domain: "acme".into(),
            appointment_id: "A0001".into(),
            formats: vec![OutputFormat::SourceJson as i32],
        },
        GRPC_TOKEN,
    );
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let e = OrderServiceClient::new(bridge.channel().await)
        .get_order(request)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    // The bridge answers DEADLINE_EXCEEDED a little before the deadline. The tonic client
    // also runs its own timer on the same deadline and reports CANCELLED "Timeout expired"
    // when that fires first (on a saturated machine the answer can arrive late).
    let client_timer = e.code() == Code::Cancelled && e.message() == "Timeout expired";
    assert!(e.code() == Code::DeadlineExceeded || client_timer, "{e:?}");
    // The QUBS requests were abandoned with the call: none got its answer. (The appointment
    // itself with the GET; without it, its comments and attachments.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calls: Vec<_> = bridge
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/appointments/A0001"))
        .collect();
    assert_eq!(
        calls.len(),
        if mode.is_strict() { 2 } else { 1 },
        "{calls:?}"
    );
    assert!(
        calls.iter().all(|c| c.status == 0),
        "cancelled before QUBS answered"
    );
    // What the bridge itself answered, whichever timer the client saw first.
    let metrics = bridge.admin_text("/metrics").await;
    assert!(
        metrics.contains(
            r#"qubs_bridge_grpc_requests_total{method="GetOrder",code="DeadlineExceeded"} 1"#
        ),
        "{metrics}"
    );
}

async fn streaming_ten_thousand_orders_stops_paging_when_cancelled(mode: Mode) {
    let sim = with_pending(10_000);
    let bridge = mode.start_bridge(sim, &[]).await;
    let mut client = OrderServiceClient::new(bridge.channel().await);
    let mut stream = client
        .stream_pending_orders(authed(
            StreamPendingOrdersRequest {
                domain: "acme".into(),
                formats: vec![OutputFormat::SourceJson as i32],
                // Told apart from the readiness probe's pages by its size.
                page_size: 250,
                include_comments: false,
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    while let Some(item) = stream.next().await {
        let item = item.unwrap();
        assert!(item.order.is_some());
        received += 1;
        if received == 5_000 {
            // 20 pages of 250 read
            break;
        }
    }
    drop(stream);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stream_pages = || {
        bridge
            .sim
            .requests()
            .iter()
            .filter(|r| {
                r.path.ends_with("/pending")
                    && r.query
                        .as_deref()
                        .unwrap_or_default()
                        .contains("pageSize=250")
            })
            .count()
    };
    let pages_then = stream_pages();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        pages_then,
        stream_pages(),
        "paging stopped after the cancel"
    );
    // 5,000 orders are 20 full pages of 250; strict pages run 250, 0, 125, 250, ... (the
    // simulator's DynamoDB-style paging), so 40.
    let read = if mode.is_strict() { 40 } else { 20 };
    assert!(
        (read..=read + 3).contains(&pages_then),
        "at most a page or two fetched ahead of the {read} pages read: {pages_then}"
    );

    // Read to the end, the stream has every order once.
    let mut stream = client
        .stream_pending_orders(authed(
            StreamPendingOrdersRequest {
                domain: "acme".into(),
                formats: vec![OutputFormat::SourceJson as i32],
                page_size: 500,
                include_comments: false,
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut ids = std::collections::HashSet::new();
    while let Some(item) = stream.next().await {
        ids.insert(item.unwrap().order.unwrap().appointment_id);
    }
    assert_eq!(ids.len(), 10_000);
}

async fn attachment_content_streams_in_chunks(mode: Mode) {
    let sim = with_pending(1);
    let content: Vec<u8> = (0..24 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut meta = Map::new();
    meta.insert("guid".into(), json!("big-1"));
    meta.insert("fileName".into(), json!("series.dcm"));
    sim.add_attachment(
        "acme",
        "A0001",
        meta,
        "application/dicom",
        Bytes::from(content.clone()),
    );
    let bridge = mode.start_bridge(sim, &[]).await;
    let mut client = OrderServiceClient::new(bridge.channel().await);
    let mut stream = client
        .get_attachment_content(authed(
            GetAttachmentContentRequest {
                domain: "acme".into(),
                appointment_id: "A0001".into(),
                attachment_guid: "big-1".into(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut received = Vec::with_capacity(content.len());
    let mut messages = 0;
    let mut first = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if first.is_none() {
            first = Some((
                chunk.content_type.clone(),
                chunk.total_size,
                chunk.file_name.clone(),
            ));
        }
        received.extend_from_slice(&chunk.data);
        messages += 1;
    }
    assert_eq!(
        first.unwrap(),
        (
            "application/dicom".to_string(),
            content.len() as u64,
            "series.dcm".to_string()
        )
    );
    assert!(
        messages >= 24,
        "streamed in chunks (of 1 MiB at most on average), not whole: {messages}"
    );
    assert!(received == content, "content differs");
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let bridge = start_bridge(Simulator::new(), &[]).await;
    let mut client = ServerReflectionClient::new(bridge.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"qubs_bridge.v1.OrderService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

async fn metrics_count_rpcs_and_qubs_calls(mode: Mode) {
    let bridge = mode.start_bridge(with_pending(3), &[]).await;
    let mut client = OrderServiceClient::new(bridge.channel().await);
    client
        .list_pending_orders(authed(list("acme", 0, ""), GRPC_TOKEN))
        .await
        .unwrap();
    let _ = client
        .list_pending_orders(authed(list("globex", 0, ""), GRPC_TOKEN))
        .await;
    let text = bridge.admin_text("/metrics").await;
    assert!(
        text.contains(r#"qubs_bridge_grpc_requests_total{method="ListPendingOrders",code="Ok"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"qubs_bridge_grpc_requests_total{method="ListPendingOrders",code="PermissionDenied"} 1"#), "{text}");
    assert!(
        text.contains(
            r#"qubs_bridge_qubs_requests_total{operation="GET pending appointments",status="200"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains("qubs_bridge_qubs_token_refreshes_total 1\n"),
        "{text}"
    );
}

async fn gzip_size_limits_and_mapping_failures(mode: Mode) {
    use qubs_bridge::grpc::pb::SubmitOruRequest;
    use qubs_bridge::grpc::pb::result_service_client::ResultServiceClient;
    use tonic::codec::CompressionEncoding;

    let sim = with_pending(2);
    // A2 lacks the patient name the ServiceRequest mapping requires.
    let mut nameless = common::pending("A0002");
    nameless.as_object_mut().unwrap().remove("patientName");
    sim.put_appointment("acme", nameless);
    let bridge = mode
        .start_bridge(sim, &[("QUBS_BRIDGE__GRPC__MAX_MESSAGE_BYTES", "65536")])
        .await;

    // gzip both ways.
    let mut client = OrderServiceClient::new(bridge.channel().await)
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let order = client
        .get_order(authed(
            GetOrderRequest {
                domain: "acme".into(),
                appointment_id: "A0001".into(),
                formats: vec![
                    OutputFormat::FhirServiceRequest as i32,
                    OutputFormat::Hl7OrmO01 as i32,
                ],
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let sr: Value = serde_json::from_str(&order.outputs[0].content).unwrap();
    assert_eq!(sr["resourceType"], "ServiceRequest");
    assert!(order.outputs[1].content.starts_with("MSH|^~\\&|"));
    assert!(order.mapping_set_version.starts_with("sha256:"));

    // A mapping failure names the mapping and the rule.
    let e = client
        .get_order(authed(
            GetOrderRequest {
                domain: "acme".into(),
                appointment_id: "A0002".into(),
                formats: vec![OutputFormat::FhirServiceRequest as i32],
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("service_request") && e.message().contains(".yaml:"),
        "{}",
        e.message()
    );

    // Messages over grpc.max_message_bytes are refused.
    let e = ResultServiceClient::new(bridge.channel().await)
        .submit_oru(authed(
            SubmitOruRequest {
                message: vec![b'x'; 100_000],
                domain: "acme".into(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap_err();
    // tonic answers OUT_OF_RANGE for a message over the decoding limit.
    assert_eq!(e.code(), Code::OutOfRange, "{}", e.message());
    assert!(e.message().contains("65536"), "{}", e.message());
}
