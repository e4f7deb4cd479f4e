//! Security checks over real sockets:
//!
//! - every RPC of every bridge service (enumerated from the API's descriptors, checked
//!   against what the server lists through reflection) refuses a call without credentials
//!   or with an unknown token (UNAUTHENTICATED), and a caller asking for a domain it may not
//!   use (PERMISSION_DENIED);
//! - error paths — QUBS refusing the bridge's client credentials, bad gRPC tokens, failed
//!   TLS handshakes on gRPC and MLLP, bad configuration — log and answer with no secret (QUBS
//!   client secret, gRPC bearer tokens, TLS private keys) and no PHI, with every log level on.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use bytes::{Buf, BufMut};
use common::logs::Capture;
use common::pki::Pki;
use common::{GRPC_TOKEN, authed, pending, start_bridge_with, with_pending};
use prost::Message;
use qubs_bridge::config::GrpcClient;
use qubs_bridge::grpc::pb;
use qubs_bridge::mllp::MllpClient;
use qubs_bridge::mllp::client::ClientTls;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tracing_subscriber::util::SubscriberInitExt;

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
    assert_eq!(served_services(&channel).await, expected);
    assert_eq!(services.len(), 5, "{services:?}");
    assert_eq!(methods.len(), 15, "{methods:#?}");

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

/// Every line of base64 in a PEM file (the key material itself).
fn pem_body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn error_paths_log_no_secret_and_no_phi() {
    let capture = Capture::default();
    capture.subscriber("trace").init();
    const QUBS_SECRET: &str = "qubs-secret-7Hq2Lw9x";
    const WRONG_SECRET: &str = "wrong-secret-Zp4Kv81m";
    const BAD_TOKEN: &str = "guessed-token-Mx7Rb2qt";
    const PATIENT: &str = "Evangeline Pennywhistle";
    let mut answers: Vec<String> = Vec::new();

    // 1. QUBS refuses the bridge's client credentials (401 from the token endpoint).
    let sim = with_pending(1);
    sim.put_appointment("acme", {
        let mut a = pending("A0002");
        a["patientName"] = PATIENT.into();
        a
    });
    let bridge = start_bridge_with(
        sim,
        &[("QUBS_BRIDGE__QUBS__CLIENT_SECRET", WRONG_SECRET)],
        |_| {},
    )
    .await;
    let channel = bridge.channel().await;
    let mut orders = pb::order_service_client::OrderServiceClient::new(channel.clone());
    let e = orders
        .get_order(authed(
            pb::GetOrderRequest {
                domain: "acme".into(),
                appointment_id: "A0002".into(),
                formats: vec![],
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("client credentials"),
        "{}",
        e.message()
    );
    answers.push(e.message().to_string());

    // 2. A token endpoint that echoes the form it was sent in its error page (a
    //    misconfigured proxy): the error the bridge reports must not carry the secret.
    let echo = echoing_token_endpoint().await;
    let settings = qubs_bridge::config::Settings::load_with_env(
        None,
        [
            ("QUBS_BRIDGE__QUBS__BASE_URL", format!("{echo}/v1")),
            ("QUBS_BRIDGE__QUBS__TOKEN_URL", format!("{echo}/token")),
            ("QUBS_BRIDGE__QUBS__CLIENT_SECRET", QUBS_SECRET.to_string()),
            ("QUBS_BRIDGE__QUBS__RETRY__MAX_ATTEMPTS", "1".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    )
    .unwrap()
    .qubs;
    let client = qubs_bridge::qubs::Client::new(&settings).unwrap();
    let e = client.appointment("acme", "A0001").await.unwrap_err();
    tracing::error!(error = %e, "QUBS token refused");
    answers.push(e.to_string());
    assert!(e.to_string().contains("401"), "{e}");

    // 3. Bad gRPC tokens.
    for token in [BAD_TOKEN, &format!("{GRPC_TOKEN}x")] {
        let e = orders
            .list_pending_orders(authed(
                pb::ListPendingOrdersRequest {
                    domain: "acme".into(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        answers.push(e.message().to_string());
    }

    // 4. TLS handshakes that fail: gRPC with mutual TLS and no client certificate, MLLP
    //    with mutual TLS and a certificate from another CA.
    let pki = Pki::new();
    let tls = pki.server_tls(true);
    let server_key = std::fs::read_to_string(&tls.key_file).unwrap();
    let mllp_tls = pki.server_tls(true);
    let mllp_key = std::fs::read_to_string(&mllp_tls.key_file).unwrap();
    let secure = start_bridge_with(with_pending(1), &[], |s| {
        s.grpc.tls = Some(tls);
        s.mllp.tls = Some(mllp_tls);
    })
    .await;
    let no_cert = tonic::transport::Endpoint::from_shared(format!(
        "https://localhost:{}",
        secure.service.grpc_addr.port()
    ))
    .unwrap()
    .tls_config(
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pki.ca_pem())),
    )
    .unwrap()
    .connect()
    .await;
    if let Ok(channel) = no_cert {
        let e = pb::order_service_client::OrderServiceClient::new(channel)
            .list_pending_orders(authed(
                pb::ListPendingOrdersRequest {
                    domain: "acme".into(),
                    ..Default::default()
                },
                GRPC_TOKEN,
            ))
            .await
            .unwrap_err();
        answers.push(e.message().to_string());
    }
    let stranger = Pki::new();
    let (cert, key) = stranger.issue_files("engine", "engine", &[]);
    let client_key = std::fs::read_to_string(&key).unwrap();
    let tls = ClientTls::from_pem_files(&pki.ca_file(), Some((&cert, &key)), "localhost").unwrap();
    let mllp = secure.service.mllp_addr.unwrap();
    match MllpClient::connect(mllp, Some(&tls), Duration::from_secs(5)).await {
        Err(e) => answers.push(e.to_string()),
        Ok(mut c) => {
            let r = c.call(b"MSH|^~\\&|x", Duration::from_secs(5)).await;
            assert!(r.is_err(), "a certificate from another CA was taken");
            answers.push(r.unwrap_err().to_string());
        }
    }

    // 5. Bad configuration, through the binary: the messages name keys and positions,
    //    never the secret or key material.
    let dir = tempfile::tempdir().unwrap();
    let bad_key = dir.path().join("bad.key");
    std::fs::write(
        &bad_key,
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            "QUJD".repeat(16)
        ),
    )
    .unwrap();
    let configs = [
        // A syntax error on the secret's own line.
        format!("[qubs]\nbase_url = \"http://127.0.0.1:1/v1\"\nclient_secret = \"{QUBS_SECRET}\n"),
        // The secret where a table should be.
        format!("qubs = \"{QUBS_SECRET}\"\n"),
        // A key file that is not a key.
        format!(
            "[qubs]\nbase_url = \"http://127.0.0.1:1/v1\"\ntoken_url = \"http://127.0.0.1:1/t\"\nclient_secret = \"{QUBS_SECRET}\"\n[grpc.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            bad_key.display(),
            bad_key.display()
        ),
    ];
    let mut cli_output = String::new();
    for (i, config) in configs.iter().enumerate() {
        let path = dir.path().join(format!("bridge{i}.toml"));
        std::fs::write(&path, config).unwrap();
        for args in [&["config", "check"][..], &["serve", "--config"][..]] {
            let out = bin()
                .args(args)
                .arg(&path)
                .env("QUBS_BRIDGE__SERVER__GRPC_LISTEN", "127.0.0.1:0")
                .env("QUBS_BRIDGE__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
                .env("QUBS_BRIDGE__MLLP__ENABLED", "false")
                .env("QUBS_BRIDGE__RESULTS__OUTBOX_PATH", dir.path().join("o.db"))
                .output()
                .unwrap();
            // `config check` does not open the TLS files; `serve` must refuse all three.
            assert!(
                !out.status.success() || (i == 2 && args[0] == "config"),
                "config {i} ({args:?}) was accepted"
            );
            cli_output.push_str(&String::from_utf8_lossy(&out.stdout));
            cli_output.push_str(&String::from_utf8_lossy(&out.stderr));
            cli_output.push('\n');
        }
    }

    drop(secure);
    drop(bridge);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = capture.text();
    assert!(
        logs.contains("TLS handshake failed") || logs.contains("handshake"),
        "TLS failures were logged"
    );
    let mut secrets: Vec<String> = vec![
        QUBS_SECRET.into(),
        WRONG_SECRET.into(),
        BAD_TOKEN.into(),
        GRPC_TOKEN.into(),
        OTHER_TOKEN.into(),
        PATIENT.into(),
        "QUJDQUJD".into(),
    ];
    for pem in [&server_key, &mllp_key, &client_key] {
        secrets.extend(pem_body_lines(pem));
    }
    let everything = format!("{logs}\n{}\n{cli_output}", answers.join("\n"));
    for s in &secrets {
        if let Some(i) = everything.find(s.as_str()) {
            let from = i.saturating_sub(200);
            let mut to = (i + s.len() + 100).min(everything.len());
            while !everything.is_char_boundary(to) {
                to += 1;
            }
            let mut from_b = from;
            while !everything.is_char_boundary(from_b) {
                from_b -= 1;
            }
            panic!(
                "a secret or PHI appears in logs, answers or CLI output: {s:?}\n…{}…",
                &everything[from_b..to]
            );
        }
    }
}

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qubs-bridge"));
    for (k, _) in std::env::vars() {
        if k.starts_with("QUBS_BRIDGE") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A token endpoint that answers 401 with the request body in its HTML page.
async fn echoing_token_endpoint() -> String {
    use axum::http::StatusCode;
    use axum::response::{Html, IntoResponse};
    async fn token(body: String) -> impl IntoResponse {
        (
            StatusCode::UNAUTHORIZED,
            Html(format!(
                "<html><body>Bad credentials in request: {body}</body></html>"
            )),
        )
    }
    let app = axum::Router::new().route("/token", axum::routing::post(token));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}
