//! An MLLP client: one connection, frames out, reply frames back. Used by the tests, the
//! benchmark and outbound feeds.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_util::codec::Framed;

use super::codec::{CodecError, Inbound, MllpCodec};

/// Largest reply [`MllpClient`] accepts unless told otherwise.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// What went wrong talking to an MLLP peer. Messages carry sizes and addresses only.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("MLLP connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("MLLP connect failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("MLLP TLS: {0}")]
    Tls(String),
    #[error("no MLLP reply within {0:?}")]
    ReplyTimeout(Duration),
    #[error("the MLLP peer closed the connection")]
    Closed,
    #[error("the MLLP peer closed the connection mid-frame ({bytes} bytes discarded)")]
    ClosedMidFrame { bytes: usize },
    #[error("MLLP reply of {size} bytes is larger than the {max}-byte limit")]
    OversizeReply { size: usize, max: usize },
    #[error("the message contains an MLLP framing byte sequence (0x0B or 0x1C 0x0D)")]
    InvalidMessage,
    #[error("MLLP I/O: {0}")]
    Io(#[source] std::io::Error),
}

impl From<CodecError> for ClientError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Io(e) if peer_gone(&e) => ClientError::Closed,
            CodecError::Io(e) => ClientError::Io(e),
            CodecError::Truncated { bytes } => ClientError::ClosedMidFrame { bytes },
            CodecError::FramingBytesInPayload => ClientError::InvalidMessage,
        }
    }
}

/// Errors that mean the peer closed the connection rather than a local failure.
fn peer_gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof
    )
}

/// TLS for [`MllpClient::connect`]: a rustls client configuration and the name the server
/// certificate must carry.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl ClientTls {
    pub fn new(
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<ClientTls, ClientError> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| ClientError::Tls(format!("server name `{server_name}`: {e}")))?;
        Ok(ClientTls {
            config,
            server_name,
        })
    }

    /// Trusts the CA certificates in `ca_file`; presents `identity` (certificate chain file,
    /// key file) for mutual TLS.
    pub fn from_pem_files(
        ca_file: &Path,
        identity: Option<(&Path, &Path)>,
        server_name: &str,
    ) -> Result<ClientTls, ClientError> {
        let tls_err = |path: &Path, e: &dyn std::fmt::Display| {
            ClientError::Tls(format!("{}: {e}", path.display()))
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| tls_err(ca_file, &e))? {
            roots
                .add(cert.map_err(|e| tls_err(ca_file, &e))?)
                .map_err(|e| tls_err(ca_file, &e))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert_file, key_file)) => {
                let certs = CertificateDer::pem_file_iter(cert_file)
                    .map_err(|e| tls_err(cert_file, &e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| tls_err(cert_file, &e))?;
                let key =
                    PrivateKeyDer::from_pem_file(key_file).map_err(|e| tls_err(key_file, &e))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| tls_err(cert_file, &e))?
            }
        };
        ClientTls::new(Arc::new(config), server_name)
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One MLLP connection.
pub struct MllpClient {
    framed: Framed<Box<dyn Io>, MllpCodec>,
    max_reply_bytes: usize,
}

impl std::fmt::Debug for MllpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MllpClient")
            .field("max_reply_bytes", &self.max_reply_bytes)
            .finish_non_exhaustive()
    }
}

impl MllpClient {
    /// Connects (and completes the TLS handshake) within `connect_timeout`.
    pub async fn connect(
        addr: impl ToSocketAddrs,
        tls: Option<&ClientTls>,
        connect_timeout: Duration,
    ) -> Result<MllpClient, ClientError> {
        let connect = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(ClientError::Connect)?;
            tcp.set_nodelay(true).map_err(ClientError::Connect)?;
            let io: Box<dyn Io> = match tls {
                None => Box::new(tcp),
                Some(tls) => Box::new(
                    TlsConnector::from(tls.config.clone())
                        .connect(tls.server_name.clone(), tcp)
                        .await
                        .map_err(|e| ClientError::Tls(e.to_string()))?,
                ),
            };
            Ok::<_, ClientError>(io)
        };
        let io = tokio::time::timeout(connect_timeout, connect)
            .await
            .map_err(|_| ClientError::ConnectTimeout(connect_timeout))??;
        Ok(MllpClient {
            framed: Framed::new(io, MllpCodec::new(DEFAULT_MAX_REPLY_BYTES)),
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
        })
    }

    /// Sets the largest reply accepted (longer ones fail with
    /// [`ClientError::OversizeReply`] and are skipped).
    pub fn with_max_reply_bytes(mut self, max: usize) -> MllpClient {
        self.max_reply_bytes = max;
        *self.framed.codec_mut() = MllpCodec::new(max);
        self
    }

    /// Frames and writes `message`. Not bounded in time: use [`MllpClient::call`] for that.
    pub async fn send(&mut self, message: &[u8]) -> Result<(), ClientError> {
        self.framed.send(message).await?;
        Ok(())
    }

    /// The next reply frame's payload.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Bytes, ClientError> {
        match tokio::time::timeout(timeout, self.framed.next()).await {
            Err(_) => Err(ClientError::ReplyTimeout(timeout)),
            Ok(None) => Err(ClientError::Closed),
            Ok(Some(Err(e))) => Err(e.into()),
            Ok(Some(Ok(Inbound::Message(reply)))) => Ok(reply),
            Ok(Some(Ok(Inbound::TooLarge { size, .. }))) => Err(ClientError::OversizeReply {
                size,
                max: self.max_reply_bytes,
            }),
        }
    }

    /// Sends `message` and waits for the next reply, all within `timeout`.
    pub async fn call(&mut self, message: &[u8], timeout: Duration) -> Result<Bytes, ClientError> {
        let started = tokio::time::Instant::now();
        tokio::time::timeout(timeout, self.send(message))
            .await
            .map_err(|_| ClientError::ReplyTimeout(timeout))??;
        self.recv(timeout.saturating_sub(started.elapsed())).await
    }
}
