//! Security checks over real sockets:
//!
//! every RPC of every bridge service (enumerated from the API's descriptors, checked against
//! what the server lists through reflection) refuses a call without credentials or with an
//! unknown token (UNAUTHENTICATED), and a caller asking for a domain it may not use
//! (PERMISSION_DENIED). The error paths' logs are checked in `tests/exclusive/security_logs.rs`.

use crate::common;

use std::collections::BTreeSet;

use bytes::{Buf, BufMut};
use common::{GRPC_TOKEN, authed, start_bridge_with, with_pending};
use prost::Message;
use qubs_bridge::config::GrpcClient;
use qubs_bridge::grpc::pb;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

/// The token of a second caller, allowed only `globex`.
const OTHER_TOKEN: &str = "other-caller-token-5d1a";

/// Passes request and response bodies through as bytes: lets the test call any method.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// One RPC of the API: its path and, if its request has one, the `domain` field number.
#[derive(Debug)]
struct Method {
    path: String,
    domain_field: Option<i32>,
}

/// Every method of every `qubs_bridge.v1` service, from the compiled descriptors.
fn api_methods() -> (BTreeSet<String>, Vec<Method>) {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut services = BTreeSet::new();
    let mut methods = Vec::new();
    for file in &set.file {
        let package = file.package();
        for service in &file.service {
            let full = format!("{package}.{}", service.name());
            services.insert(full.clone());
            for m in &service.method {
                let input = m.input_type().rsplit('.').next().unwrap();
                let message = set
                    .file
                    .iter()
                    .flat_map(|f| &f.message_type)
                    .find(|d| d.name() == input)
                    .unwrap_or_else(|| panic!("no descriptor for {input}"));
                methods.push(Method {
                    path: format!("/{full}/{}", m.name()),
                    domain_field: message
                        .field
                        .iter()
                        .find(|f| f.name() == "domain")
                        .map(|f| f.number()),
                });
            }
        }
    }
    (services, methods)
}

/// A request body with only `domain` set.
fn with_domain(field: Option<i32>, domain: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(n) = field {
        prost::encoding::string::encode(n as u32, &domain.to_string(), &mut out);
    }
    out
}

/// Calls `path` with `body` and `token`; the status it ends with (OK when it succeeded).
async fn call(
    channel: &tonic::transport::Channel,
    path: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let request = match token {
        Some(t) => authed(body, t),
        None => tonic::Request::new(body),
    };
    let path = PathAndQuery::try_from(path).unwrap();
    // Server streaming serves unary methods too: one message, then the status.
    match grpc.server_streaming(request, path, RawCodec).await {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return tonic::Status::ok(""),
                    Err(status) => return status,
                }
            }
        }
    }
}

/// The services the server lists through reflection.
async fn served_services(channel: &tonic::transport::Channel) -> BTreeSet<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    }
}

#[tokio::test]
async fn every_rpc_requires_credentials_and_a_domain_the_caller_may_use() {
    let bridge = start_bridge_with(
        with_pending(1),
        &[
            ("QUBS_BRIDGE__QUBS__DOMAINS", "acme,globex"),
            ("QUBS_BRIDGE__MLLP__DOMAIN", "acme"),
            ("QUBS_BRIDGE__RESULTS__ACK_MODE", "after_store"),
        ],
        |s| {
            s.grpc.clients.push(GrpcClient {
                name: "other".into(),
                token_sha256: Some(qubs_bridge::grpc::auth::hash_token(OTHER_TOKEN)),
                certificate_cn: None,
                domains: vec!["globex".into()],
            })
        },
    )
    .await;
    let channel = bridge.channel().await;

    let (services, methods) = api_methods();
    // What the server serves is exactly the API plus the two open services.
    let mut expected = services.clone();
    expected.insert("grpc.health.v1.Health".into());
    expected.insert("grpc.reflection.v1.ServerReflection".into());
    expected.insert("grpc.reflection.v1alpha.ServerReflection".into());
    assert_eq!(served_services(&channel).await, expected);
    assert_eq!(services.len(), 5, "{services:?}");
    assert_eq!(methods.len(), 16, "{methods:#?}");

    // An outbox entry of `acme`, to ask for as a caller of another domain.
    let stored = pb::result_service_client::ResultServiceClient::new(channel.clone())
        .submit_report(authed(
            pb::SubmitReportRequest {
                domain: "acme".into(),
                appointment_id: "A0001".into(),
                report_text: "text".into(),
                report_status: "final".into(),
                ..Default::default()
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();

    let mut failures = Vec::new();
    let expect = |failures: &mut Vec<String>,
                  method: &Method,
                  what: &str,
                  got: tonic::Status,
                  want: Code| {
        if got.code() != want {
            failures.push(format!(
                "{} {what}: {:?} `{}`, want {want:?}",
                method.path,
                got.code(),
                got.message()
            ));
        }
    };
    for m in &methods {
        let acme = with_domain(m.domain_field, "acme");
        let got = call(&channel, &m.path, acme.clone(), None).await;
        expect(
            &mut failures,
            m,
            "without credentials",
            got,
            Code::Unauthenticated,
        );
        let got = call(&channel, &m.path, acme.clone(), Some("wrong-token")).await;
        expect(
            &mut failures,
            m,
            "with an unknown token",
            got,
            Code::Unauthenticated,
        );
        let mut bad_scheme = tonic::Request::new(acme.clone());
        bad_scheme.metadata_mut().insert(
            "authorization",
            format!("Basic {GRPC_TOKEN}").parse().unwrap(),
        );
        let got = {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let path = PathAndQuery::try_from(m.path.as_str()).unwrap();
            match grpc.server_streaming(bad_scheme, path, RawCodec).await {
                Err(s) => s,
                Ok(r) => match r.into_inner().message().await {
                    Err(s) => s,
                    Ok(_) => tonic::Status::ok(""),
                },
            }
        };
        expect(
            &mut failures,
            m,
            "with a Basic authorization",
            got,
            Code::Unauthenticated,
        );
        if m.domain_field.is_some() {
            let got = call(
                &channel,
                &m.path,
                with_domain(m.domain_field, "globex"),
                Some(GRPC_TOKEN),
            )
            .await;
            expect(
                &mut failures,
                m,
                "for a domain the token may not use",
                got,
                Code::PermissionDenied,
            );
            let got = call(&channel, &m.path, acme.clone(), Some(OTHER_TOKEN)).await;
            expect(
                &mut failures,
                m,
                "with another domain's token",
                got,
                Code::PermissionDenied,
            );
        }
        // The right caller gets past authentication (whatever the empty request then gets).
        let got = call(&channel, &m.path, acme, Some(GRPC_TOKEN)).await;
        if matches!(
            got.code(),
            Code::Unauthenticated | Code::PermissionDenied | Code::Unimplemented
        ) {
            failures.push(format!("{} with the right token: {got:?}", m.path));
        }
    }
    // Methods without a domain in the request check the domain of what they touch.
    let entry = pb::GetOutboxEntryRequest {
        id: stored.outbox_id,
    }
    .encode_to_vec();
    let path = "/qubs_bridge.v1.OutboxService/GetOutboxEntry";
    let got = call(&channel, path, entry.clone(), Some(OTHER_TOKEN)).await;
    if got.code() != Code::PermissionDenied {
        failures.push(format!("{path} of another domain's entry: {got:?}"));
    }
    let retry = pb::RetryOutboxRequest {
        ids: vec![stored.outbox_id],
        ..Default::default()
    }
    .encode_to_vec();
    let path = "/qubs_bridge.v1.OutboxService/RetryOutbox";
    let got = call(&channel, path, retry, Some(OTHER_TOKEN)).await;
    if got.code() != Code::PermissionDenied {
        failures.push(format!("{path} of another domain's entry: {got:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
