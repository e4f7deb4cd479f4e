//! TLS and mutual TLS on the gRPC API, with certificates the test makes itself.

use crate::common;

use common::pki::Pki;
use common::{GRPC_TOKEN, authed, start_bridge_with, with_pending};
use qubs_bridge::config::GrpcClient;
use qubs_bridge::grpc::pb::order_service_client::OrderServiceClient;
use qubs_bridge::grpc::pb::{GetOrderRequest, OutputFormat};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

async fn tls_channel(
    addr: std::net::SocketAddr,
    pki: &Pki,
    identity: Option<(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca_pem()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

fn get_order() -> GetOrderRequest {
    GetOrderRequest {
        domain: "acme".into(),
        appointment_id: "A0001".into(),
        formats: vec![OutputFormat::SourceJson as i32],
    }
}

#[tokio::test]
async fn tls_with_bearer_tokens() {
    let pki = Pki::new();
    let tls = pki.server_tls(false);
    let bridge = start_bridge_with(with_pending(1), &[], |s| s.grpc.tls = Some(tls)).await;
    let addr = bridge.service.grpc_addr;
    let channel = tls_channel(addr, &pki, None).await.unwrap();
    let order = OrderServiceClient::new(channel)
        .get_order(authed(get_order(), GRPC_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(order.order.unwrap().appointment_id, "A0001");
    // Plaintext to a TLS port gets nowhere.
    let plain = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let e = OrderServiceClient::new(plain)
        .get_order(authed(get_order(), GRPC_TOKEN))
        .await
        .unwrap_err();
    assert_ne!(e.code(), Code::Ok);
}

#[tokio::test]
async fn mutual_tls_identifies_callers_by_certificate() {
    let pki = Pki::new();
    let tls = pki.server_tls(true);
    let bridge = start_bridge_with(with_pending(1), &[], |s| {
        s.grpc.tls = Some(tls);
        s.grpc.clients.push(GrpcClient {
            name: "engine-by-cert".into(),
            token_sha256: None,
            certificate_cn: Some("mirth-prod".into()),
            domains: vec!["acme".into()],
        });
    })
    .await;
    let addr = bridge.service.grpc_addr;

    // A known certificate is enough: no token.
    let channel = tls_channel(addr, &pki, Some(pki.issue("mirth-prod", &[])))
        .await
        .unwrap();
    let mut client = OrderServiceClient::new(channel);
    let order = client
        .get_order(tonic::Request::new(get_order()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(order.order.unwrap().appointment_id, "A0001");
    let mut other_domain = get_order();
    other_domain.domain = "globex".into();
    assert_eq!(
        client
            .get_order(tonic::Request::new(other_domain))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    // A certificate from the CA but for nobody configured.
    let channel = tls_channel(addr, &pki, Some(pki.issue("stranger", &[])))
        .await
        .unwrap();
    let e = OrderServiceClient::new(channel)
        .get_order(tonic::Request::new(get_order()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("stranger"), "{}", e.message());

    // No client certificate: the handshake is refused.
    let refused = match tls_channel(addr, &pki, None).await {
        Err(_) => true,
        Ok(channel) => OrderServiceClient::new(channel)
            .get_order(authed(get_order(), GRPC_TOKEN))
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate got through");
}
