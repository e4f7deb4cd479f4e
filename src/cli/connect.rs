//! How the CLI's gRPC subcommands reach a running bridge.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Args, Clone)]
pub struct Connection {
    /// The bridge's gRPC address.
    #[arg(
        long,
        env = "QUBS_BRIDGE_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// Bearer token (the demo's is `demo-token`).
    #[arg(long, env = "QUBS_BRIDGE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust for an https:// server.
    #[arg(long, global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, global = true, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, global = true, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Give up on a call after this many seconds.
    #[arg(long, default_value_t = 60, global = true)]
    pub timeout_secs: u64,
}

/// Output style of the CLI client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Display {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line, for scripts.
    Json,
}

pub type AuthChannel = InterceptedService<Channel, Bearer>;

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

impl Connection {
    /// Connects, with TLS when the address is https://.
    pub async fn channel(&self) -> anyhow::Result<AuthChannel> {
        let mut endpoint = Endpoint::from_shared(self.server.clone())
            .with_context(|| format!("`{}` is not a gRPC address", self.server))?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(self.timeout_secs));
        if self.server.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.ca_cert {
                let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                let cert =
                    std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
                let key =
                    std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to the bridge at {}", self.server))?;
        let token = match &self.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .context("the token has characters gRPC metadata cannot carry")?,
            ),
            None => None,
        };
        Ok(InterceptedService::new(channel, Bearer(token)))
    }
}

/// A gRPC error as a one-line message with the ids support needs.
pub fn describe(status: &tonic::Status) -> anyhow::Error {
    let mut msg = format!("{:?}: {}", status.code(), status.message());
    for key in ["qubs-request-id", "x-correlation-id"] {
        if let Some(v) = status.metadata().get(key).and_then(|v| v.to_str().ok()) {
            msg.push_str(&format!(" [{key} {v}]"));
        }
    }
    anyhow::anyhow!(msg)
}
