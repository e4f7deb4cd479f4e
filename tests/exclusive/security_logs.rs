//! Error paths log no secret and no PHI: QUBS refusing the bridge's client credentials,
//! bad gRPC tokens, failed TLS handshakes on gRPC and MLLP, bad configuration — with every
//! log level on, the logs, the answers and the CLI output carry no secret (QUBS client
//! secret, gRPC bearer tokens, TLS private keys) and no PHI.

use std::process::Command;
use std::time::Duration;

use crate::common;
use crate::common::pki::Pki;
use crate::common::{GRPC_TOKEN, authed, pending, start_bridge_with, with_pending};
use qubs_bridge::grpc::pb;
use qubs_bridge::mllp::MllpClient;
use qubs_bridge::mllp::client::ClientTls;
use tonic::Code;

/// The token of a second caller, allowed only `globex` (as in the `it` security tests).
const OTHER_TOKEN: &str = "other-caller-token-5d1a";

/// Every line of base64 in a PEM file (the key material itself).
fn pem_body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn error_paths_log_no_secret_and_no_phi() {
    let logs_turn = common::logs::exclusive("trace");
    let capture = &logs_turn.capture;
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
