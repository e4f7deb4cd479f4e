//! The `[grpc]` section: who may call the API, TLS, and transport limits.

use serde::{Deserialize, Serialize};

use crate::tls::TlsSettings;

/// The gRPC API: who may call it, TLS, and transport limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcSettings {
    /// Callers and the QUBS domains each may use.
    #[serde(default)]
    pub clients: Vec<GrpcClient>,
    /// TLS for the gRPC listener (plaintext when absent).
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// Largest request or response message.
    pub max_message_bytes: usize,
    /// HTTP/2 keep-alive ping interval.
    pub keepalive_interval_secs: u64,
    /// Close a connection whose keep-alive ping is not answered within this time.
    pub keepalive_timeout_secs: u64,
    /// Comments fetched concurrently while listing or streaming orders.
    pub fetch_concurrency: usize,
}

/// One caller of the gRPC API, identified by a bearer token or a client certificate.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcClient {
    /// A name for logs and metrics, e.g. `mirth-prod`.
    pub name: String,
    /// SHA-256 (hex) of the caller's bearer token; the token itself is never stored.
    /// `qubs-bridge grpc new-token` makes a token and its hash.
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// Or: the Common Name of the caller's client certificate (needs `grpc.tls.client_ca_file`).
    #[serde(default)]
    pub certificate_cn: Option<String>,
    /// QUBS domains this caller may use.
    pub domains: Vec<String>,
}

impl std::fmt::Debug for GrpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcClient")
            .field("name", &self.name)
            .field("certificate_cn", &self.certificate_cn)
            .field("domains", &self.domains)
            .finish_non_exhaustive()
    }
}

impl Default for GrpcSettings {
    fn default() -> Self {
        GrpcSettings {
            clients: Vec::new(),
            tls: None,
            max_message_bytes: 16 * 1024 * 1024,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
            fetch_concurrency: 16,
        }
    }
}
