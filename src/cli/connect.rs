//! How the CLI's gRPC subcommands reach a running bridge.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::exit::{Unreachable, usage};

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
        let not_an_address = || {
            usage(format!(
                "`{}` is not a gRPC address (like http://127.0.0.1:50051 or https://bridge:50051)",
                self.server
            ))
        };
        if !(self.server.starts_with("http://") || self.server.starts_with("https://")) {
            return Err(not_an_address());
        }
        let mut endpoint = Endpoint::from_shared(self.server.clone())
            .map_err(|_| not_an_address())?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(self.timeout_secs));
        if self.server.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.ca_cert {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca, "--ca-cert")?));
            }
            if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                let cert = read(cert, "--client-cert")?;
                let key = read(key, "--client-key")?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| usage(format!("TLS settings for {}: {e}", self.server)))?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            // tonic and hyper wrap the reason in layers that repeat each other; the
            // innermost cause is the one that says what happened.
            let mut root: &dyn std::error::Error = &e;
            while let Some(source) = root.source() {
                root = source;
            }
            if root.is::<tokio_rustls::rustls::Error>() {
                // A certificate refused either way: retrying will not help, the settings will.
                return usage(format!(
                    "TLS with the bridge at {} failed: {root} (check --ca-cert, \
                     --client-cert and --client-key)",
                    self.server
                ));
            }
            anyhow::Error::new(Unreachable(format!(
                "cannot connect to the bridge at {}: {root} (is `qubs-bridge serve` running \
                 there? the address comes from --server or QUBS_BRIDGE_SERVER)",
                self.server
            )))
        })?;
        let token = match &self.token {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                usage("the token has characters gRPC metadata cannot carry (--token, QUBS_BRIDGE_TOKEN)")
            })?),
            None => None,
        };
        Ok(InterceptedService::new(channel, Bearer(token)))
    }
}

fn read(path: &std::path::Path, option: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| usage(format!("{option} {}: {e}", path.display())))
}

/// A call the bridge answered with an error, said in a line with the ids support needs.
#[derive(Debug)]
pub struct CallFailed(pub tonic::Status);

impl std::fmt::Display for CallFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = &self.0;
        let message = status.message();
        match status.code() {
            tonic::Code::Unauthenticated => write!(
                f,
                "the bridge did not accept the credentials (UNAUTHENTICATED: {message}); give \
                 the caller's token with --token or QUBS_BRIDGE_TOKEN"
            )?,
            code => write!(f, "{}: {message}", code_name(code))?,
        }
        // The ids support needs, unless the message already carries them.
        let mut said = message.to_string();
        for key in ["qubs-request-id", "x-correlation-id"] {
            if let Some(v) = status.metadata().get(key).and_then(|v| v.to_str().ok())
                && !said.contains(v)
            {
                write!(f, " [{key} {v}]")?;
                said.push_str(v);
            }
        }
        Ok(())
    }
}

impl std::error::Error for CallFailed {}

/// A gRPC error as an `anyhow::Error` (keeps the status for the exit code).
pub fn describe(status: tonic::Status) -> anyhow::Error {
    anyhow::Error::new(CallFailed(status))
}

/// The status code's name as the gRPC specification and grpcurl write it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
