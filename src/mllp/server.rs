//! The MLLP listener: accepts connections (optionally TLS), decodes frames, hands them to a
//! [`Handler`] one at a time per connection, and writes the replies the handler queues.
//!
//! Each connection runs as one task that reads and writes concurrently: the reader awaits
//! the handler for every frame before decoding the next, and the writer sends queued
//! replies in order. Logs carry the connection id, peer, sizes and counts, never payloads.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::codec::{CodecError, Inbound, MllpCodec, check_payload, put_frame};
use super::{MllpMetrics, MllpServerSettings, SettingsError};
use crate::tls::TlsSettings;

/// Replies a connection may have queued before [`Connection::reply`] waits.
const REPLY_QUEUE: usize = 64;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;
/// Queued replies are written together up to about this many bytes.
const WRITE_BATCH: usize = 64 * 1024;

/// What the server calls for every frame.
pub trait Handler: Send + Sync + 'static {
    /// Handles one frame. The next frame of the same connection is not decoded before the
    /// returned future completes. Replies go through `conn`; keep a clone of it to reply
    /// later.
    fn handle(&self, inbound: Inbound, conn: &Connection) -> impl Future<Output = ()> + Send;
}

/// One accepted connection, as the handler sees it. Cheap to clone.
#[derive(Clone)]
pub struct Connection {
    info: Arc<ConnInfo>,
    replies: mpsc::Sender<Bytes>,
}

struct ConnInfo {
    id: u64,
    peer: SocketAddr,
    client_cn: Option<String>,
}

/// A reply could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("the MLLP connection is closed")]
    Closed,
    #[error("the reply contains an MLLP framing byte sequence (0x0B or 0x1C 0x0D)")]
    FramingBytesInPayload,
}

impl Connection {
    /// Server-unique connection number (for logs).
    pub fn id(&self) -> u64 {
        self.info.id
    }

    pub fn peer(&self) -> SocketAddr {
        self.info.peer
    }

    /// Common Name of the client certificate (mutual TLS only).
    pub fn client_cn(&self) -> Option<&str> {
        self.info.client_cn.as_deref()
    }

    /// Queues `message` to be framed and written after the replies queued before it. Waits
    /// while the queue is full; fails once the connection is closed.
    pub async fn reply(&self, message: impl Into<Bytes>) -> Result<(), ReplyError> {
        let message = message.into();
        check_payload(&message).map_err(|_| ReplyError::FramingBytesInPayload)?;
        self.replies
            .send(message)
            .await
            .map_err(|_| ReplyError::Closed)
    }

    /// Whether replies can no longer be sent.
    pub fn is_closed(&self) -> bool {
        self.replies.is_closed()
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.info.id)
            .field("peer", &self.info.peer)
            .field("client_cn", &self.info.client_cn)
            .finish()
    }
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("MLLP TLS: {0}")]
    Tls(String),
    #[error("MLLP settings: {0}")]
    Settings(#[from] SettingsError),
}

/// A running listener started by [`start`].
#[derive(Debug)]
pub struct MllpServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Ends after shutdown, once connections are done or the grace period is over.
    pub task: JoinHandle<()>,
}

/// Checks the settings, binds `settings.listen`, loads TLS, and serves in a new task until `shutdown` is
/// cancelled.
pub async fn start<H: Handler>(
    settings: &MllpServerSettings,
    handler: Arc<H>,
    metrics: Arc<MllpMetrics>,
    shutdown: CancellationToken,
) -> Result<MllpServer, ServerError> {
    settings.validate()?;
    let tls = settings.tls.as_ref().map(tls_acceptor).transpose()?;
    let listener =
        TcpListener::bind(settings.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: settings.listen,
                source,
            })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: settings.listen,
        source,
    })?;
    tracing::info!(%addr, tls = tls.is_some(), "MLLP listener started");
    let settings = settings.clone();
    let task = tokio::spawn(async move {
        run(
            listener,
            &settings,
            tls,
            handler,
            metrics,
            shutdown.cancelled_owned(),
        )
        .await
    });
    Ok(MllpServer { addr, task })
}

/// Serves on `listener` (its own `listen` setting is not used) until `shutdown` completes;
/// then stops accepting, lets each connection finish the frame it is handling, and returns
/// when all are closed or `shutdown_grace_secs` have passed (the rest are cut).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    settings: &MllpServerSettings,
    handler: Arc<H>,
    metrics: Arc<MllpMetrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    settings.validate()?;
    let tls = settings.tls.as_ref().map(tls_acceptor).transpose()?;
    run(listener, settings, tls, handler, metrics, shutdown).await;
    Ok(())
}

/// What every connection task shares.
struct Shared<H> {
    handler: Arc<H>,
    metrics: Arc<MllpMetrics>,
    max_frame_bytes: usize,
    idle_timeout: Duration,
    frame_timeout: Duration,
    tls: Option<TlsAcceptor>,
    /// Cancelled on shutdown: connections close after the frame in hand.
    stop: CancellationToken,
}

async fn run<H: Handler>(
    listener: TcpListener,
    settings: &MllpServerSettings,
    tls: Option<TlsAcceptor>,
    handler: Arc<H>,
    metrics: Arc<MllpMetrics>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let shared = Arc::new(Shared {
        handler,
        metrics,
        max_frame_bytes: settings.max_frame_bytes,
        idle_timeout: Duration::from_secs(settings.idle_timeout_secs),
        frame_timeout: Duration::from_secs(settings.frame_timeout_secs),
        tls,
        stop: CancellationToken::new(),
    });
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let mut conns = JoinSet::new();
    let mut next_id = 0u64;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(done) = conns.join_next(), if !conns.is_empty() => log_panic(done),
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(error = %e, "MLLP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    shared.metrics.connections_rejected.inc();
                    tracing::warn!(
                        %peer,
                        max_connections = settings.max_connections,
                        "MLLP connection limit reached; closing the new connection"
                    );
                    drop(stream);
                    continue;
                };
                next_id += 1;
                let span = tracing::info_span!("mllp", conn = next_id, %peer);
                conns.spawn(
                    connection(stream, peer, next_id, shared.clone(), permit).instrument(span),
                );
            }
        }
    }
    drop(listener);
    shared.stop.cancel();
    tracing::info!(
        open = conns.len(),
        "MLLP listener stopped; letting open connections finish"
    );
    let grace = Duration::from_secs(settings.shutdown_grace_secs);
    let drained = tokio::time::timeout(grace, async {
        while let Some(done) = conns.join_next().await {
            log_panic(done);
        }
    })
    .await
    .is_ok();
    if !drained {
        tracing::warn!(
            open = conns.len(),
            grace_secs = grace.as_secs(),
            "MLLP connections still busy after the shutdown grace period; closing them"
        );
        conns.shutdown().await;
    }
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!("an MLLP connection task panicked (in the handler?)");
    }
}

/// Keeps the open-connections gauge right however the task ends (panics included).
struct OpenGuard(Arc<MllpMetrics>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

async fn connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: Arc<Shared<H>>,
    _permit: OwnedSemaphorePermit,
) {
    shared.metrics.connections.inc();
    shared.metrics.connections_open.inc();
    let _open = OpenGuard(shared.metrics.clone());
    // Replies are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = shared.tls.clone() else {
        return serve_connection(stream, peer, id, None, &shared).await;
    };
    let tls = match tokio::time::timeout(shared.frame_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "MLLP TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.metrics.timeout("handshake");
            tracing::warn!("MLLP TLS handshake timed out");
            return;
        }
    };
    let cn = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| crate::tls::certificate_common_name(leaf));
    serve_connection(tls, peer, id, cn, &shared).await
}

/// Why a connection ended.
enum Close {
    PeerClosed,
    /// The peer closed mid-frame; payload bytes dropped.
    Truncated(usize),
    IdleTimeout,
    /// Frame not finished in time; payload bytes dropped.
    FrameTimeout(usize),
    Shutdown,
    ReadFailed(std::io::Error),
    WriteFailed,
}

#[derive(Default)]
struct Stats {
    frames: u64,
    too_large: u64,
    garbage_bytes: u64,
}

async fn serve_connection<S, H>(
    stream: S,
    peer: SocketAddr,
    id: u64,
    client_cn: Option<String>,
    shared: &Shared<H>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin,
    H: Handler,
{
    let tls = shared.tls.is_some();
    tracing::info!(
        tls,
        client_cn = client_cn.as_deref(),
        "MLLP connection opened"
    );
    let (mut rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(REPLY_QUEUE);
    let conn = Connection {
        info: Arc::new(ConnInfo {
            id,
            peer,
            client_cn,
        }),
        replies: tx,
    };
    // `closing`: the reader is done, the writer sends what is queued and closes.
    // `broken`: the writer failed, the reader stops.
    let closing = CancellationToken::new();
    let broken = CancellationToken::new();
    let mut stats = Stats::default();
    let reader = async {
        let close = read_frames(&mut rd, &conn, shared, &broken, &mut stats).await;
        closing.cancel();
        close
    };
    let writer = write_replies(wr, rx, &closing, &broken, shared);
    let (close, replies) = tokio::join!(reader, writer);
    let m = &shared.metrics;
    let (frames, too_large, garbage_bytes) = (stats.frames, stats.too_large, stats.garbage_bytes);
    match close {
        Close::PeerClosed => tracing::info!(
            frames,
            too_large,
            garbage_bytes,
            replies,
            "MLLP connection closed by the peer"
        ),
        Close::Truncated(bytes) => {
            m.frames_truncated.inc();
            tracing::warn!(
                frames,
                too_large,
                garbage_bytes,
                replies,
                discarded_bytes = bytes,
                "MLLP connection dropped mid-frame; the partial frame was discarded"
            );
        }
        Close::IdleTimeout => {
            m.timeout("idle");
            tracing::info!(
                frames,
                too_large,
                garbage_bytes,
                replies,
                idle_timeout_secs = shared.idle_timeout.as_secs(),
                "MLLP connection closed: idle timeout"
            );
        }
        Close::FrameTimeout(bytes) => {
            m.timeout("frame");
            tracing::warn!(
                frames,
                too_large,
                garbage_bytes,
                replies,
                discarded_bytes = bytes,
                frame_timeout_secs = shared.frame_timeout.as_secs(),
                "MLLP connection closed: a frame was not completed in time"
            );
        }
        Close::Shutdown => tracing::info!(
            frames,
            too_large,
            garbage_bytes,
            replies,
            "MLLP connection closed for shutdown"
        ),
        Close::ReadFailed(e) => tracing::warn!(
            frames,
            too_large,
            garbage_bytes,
            replies,
            error = %e,
            "MLLP connection read failed"
        ),
        Close::WriteFailed => tracing::warn!(
            frames,
            too_large,
            garbage_bytes,
            replies,
            "MLLP connection closed: replies could not be written"
        ),
    }
}

enum Event {
    Read(std::io::Result<usize>),
    Deadline,
    Stop,
    WriterBroken,
}

async fn read_frames<R, H>(
    rd: &mut R,
    conn: &Connection,
    shared: &Shared<H>,
    broken: &CancellationToken,
    stats: &mut Stats,
) -> Close
where
    R: AsyncRead + Unpin,
    H: Handler,
{
    let m = &shared.metrics;
    let mut codec = MllpCodec::new(shared.max_frame_bytes);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut idle_since = Instant::now();
    // When the frame in progress started (seen at the read that brought its start byte).
    let mut frame_started: Option<Instant> = None;
    loop {
        loop {
            let inbound = match codec.decode(&mut buf) {
                Ok(Some(inbound)) => inbound,
                Ok(None) => break,
                // `decode` only fails on I/O, which it does not do; be safe anyway.
                Err(e) => return Close::ReadFailed(std::io::Error::other(e)),
            };
            count_garbage(&mut codec, stats, m);
            stats.frames += 1;
            m.frames.inc();
            match &inbound {
                Inbound::TooLarge { head, size } => {
                    stats.too_large += 1;
                    m.frames_too_large.inc();
                    tracing::warn!(
                        size,
                        max_frame_bytes = shared.max_frame_bytes,
                        head_bytes = head.len(),
                        "MLLP frame too large; the handler gets its head only"
                    );
                }
                Inbound::Message(b) => tracing::debug!(bytes = b.len(), "MLLP frame received"),
            }
            shared.handler.handle(inbound, conn).await;
            idle_since = Instant::now();
            frame_started = None;
            if shared.stop.is_cancelled() {
                return Close::Shutdown;
            }
        }
        count_garbage(&mut codec, stats, m);
        let deadline = if codec.in_frame() {
            *frame_started.get_or_insert_with(Instant::now) + shared.frame_timeout
        } else {
            frame_started = None;
            idle_since + shared.idle_timeout
        };
        buf.reserve(READ_CHUNK);
        let event = tokio::select! {
            biased;
            _ = broken.cancelled() => Event::WriterBroken,
            // A frame already started may still finish (bounded by frame_timeout).
            _ = shared.stop.cancelled(), if frame_started.is_none() => Event::Stop,
            read = rd.read_buf(&mut buf) => Event::Read(read),
            _ = tokio::time::sleep_until(deadline) => Event::Deadline,
        };
        match event {
            Event::Read(Ok(0)) => {
                let close = match codec.decode_eof(&mut buf) {
                    // `decode` already took every frame, so only a partial one can be left.
                    Ok(_) => Close::PeerClosed,
                    Err(CodecError::Truncated { bytes }) => Close::Truncated(bytes),
                    Err(e) => Close::ReadFailed(std::io::Error::other(e)),
                };
                count_garbage(&mut codec, stats, m);
                return close;
            }
            Event::Read(Ok(_)) => {}
            Event::Read(Err(e)) => return Close::ReadFailed(e),
            Event::Deadline if frame_started.is_some() => {
                return Close::FrameTimeout(codec.partial_bytes(&buf));
            }
            Event::Deadline => return Close::IdleTimeout,
            Event::Stop => return Close::Shutdown,
            Event::WriterBroken => return Close::WriteFailed,
        }
    }
}

fn count_garbage(codec: &mut MllpCodec, stats: &mut Stats, m: &MllpMetrics) {
    let n = codec.take_garbage() as u64;
    if n > 0 {
        stats.garbage_bytes += n;
        m.garbage_bytes.inc_by(n);
        tracing::debug!(bytes = n, "skipped bytes outside MLLP frames");
    }
}

/// Writes queued replies in order, batching what is already queued. Returns the number of
/// replies written.
async fn write_replies<W, H>(
    mut wr: W,
    mut rx: mpsc::Receiver<Bytes>,
    closing: &CancellationToken,
    broken: &CancellationToken,
    shared: &Shared<H>,
) -> u64
where
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    let mut written = 0;
    let mut draining = false;
    loop {
        let next = tokio::select! {
            next = rx.recv() => next,
            _ = closing.cancelled(), if !draining => {
                // No new replies; those already queued still go out.
                rx.close();
                draining = true;
                continue;
            }
        };
        let Some(first) = next else { break };
        out.clear();
        put_frame(&first, &mut out);
        let mut batch = 1;
        while out.len() < WRITE_BATCH
            && let Ok(more) = rx.try_recv()
        {
            put_frame(&more, &mut out);
            batch += 1;
        }
        let write = async {
            wr.write_all(&out).await?;
            wr.flush().await
        };
        match tokio::time::timeout(shared.frame_timeout, write).await {
            Ok(Ok(())) => written += batch,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "writing MLLP replies failed");
                broken.cancel();
                return written;
            }
            Err(_) => {
                shared.metrics.timeout("write");
                tracing::warn!(
                    bytes = out.len(),
                    "MLLP replies not written in time (the peer is not reading)"
                );
                broken.cancel();
                return written;
            }
        }
    }
    // Best effort: a FIN (and TLS close_notify) so the peer sees a clean close.
    let _ = tokio::time::timeout(shared.frame_timeout, wr.shutdown()).await;
    written
}

fn tls_acceptor(tls: &TlsSettings) -> Result<TlsAcceptor, ServerError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = read_certs(&tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", tls.key_file.display())))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca_file)? {
                roots
                    .add(cert)
                    .map_err(|e| ServerError::Tls(format!("{}: {e}", ca_file.display())))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| ServerError::Tls(format!("{}: {e}", ca_file.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", tls.cert_file.display())))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let err = |e: &dyn std::fmt::Display| ServerError::Tls(format!("{}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(&e))?;
    if certs.is_empty() {
        return Err(err(&"no PEM certificate found"));
    }
    Ok(certs)
}
