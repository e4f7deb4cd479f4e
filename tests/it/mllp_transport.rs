//! The MLLP transport over real sockets: framing edge cases, timeouts, limits, concurrency,
//! late replies, TLS, shutdown, and logs without payloads.

use crate::common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::logs::Capture;
use common::pki::Pki;
use futures::StreamExt;
use qubs_bridge::mllp::{
    ClientError, ClientTls, Connection, Handler, Inbound, MllpClient, MllpCodec, MllpMetrics,
    MllpServerSettings, ReplyError, TimeoutLabels,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Message(Vec<u8>),
    TooLarge { head: Vec<u8>, size: usize },
}

/// Replies `ACK len=<n> <payload>`; `AR size=<n> head=<n>` for oversize frames. Payloads
/// starting with `LATE` get `COMMIT` now and `APP` later; `SLOW` waits before replying;
/// `CN` gets the client certificate CN; `KEEP` keeps the connection for the test.
#[derive(Default)]
struct TestHandler {
    seen: Mutex<Vec<Seen>>,
    kept: Mutex<Option<Connection>>,
}

impl TestHandler {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Handler for TestHandler {
    async fn handle(&self, inbound: Inbound, conn: &Connection) {
        let reply = match inbound {
            Inbound::Message(m) => {
                self.seen.lock().unwrap().push(Seen::Message(m.to_vec()));
                if m.starts_with(b"LATE") {
                    conn.reply("COMMIT").await.unwrap();
                    let later = conn.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        later.reply("APP").await.unwrap();
                    });
                    return;
                }
                if m.starts_with(b"SLOW") {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
                if m.starts_with(b"CN") {
                    format!("CN={}", conn.client_cn().unwrap_or("-")).into_bytes()
                } else {
                    if m.starts_with(b"KEEP") {
                        *self.kept.lock().unwrap() = Some(conn.clone());
                    }
                    let mut r = format!("ACK len={} ", m.len()).into_bytes();
                    r.extend_from_slice(&m);
                    r
                }
            }
            Inbound::TooLarge { head, size } => {
                self.seen.lock().unwrap().push(Seen::TooLarge {
                    head: head.to_vec(),
                    size,
                });
                format!("AR size={size} head={}", head.len()).into_bytes()
            }
        };
        // The peer may be gone already (dropped-connection tests).
        let _ = conn.reply(reply).await;
    }
}

struct Server {
    addr: SocketAddr,
    handler: Arc<TestHandler>,
    metrics: Arc<MllpMetrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn settings() -> MllpServerSettings {
    MllpServerSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..MllpServerSettings::default()
    }
}

async fn start(settings: MllpServerSettings) -> Server {
    let handler = Arc::new(TestHandler::default());
    let metrics = Arc::new(MllpMetrics::default());
    let shutdown = CancellationToken::new();
    let server = qubs_bridge::mllp::start(
        &settings,
        handler.clone(),
        metrics.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    Server {
        addr: server.addr,
        handler,
        metrics,
        shutdown,
        task: server.task,
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x0B];
    v.extend_from_slice(payload);
    v.extend_from_slice(&[0x1C, 0x0D]);
    v
}

fn ack(payload: &[u8]) -> Vec<u8> {
    let mut r = format!("ACK len={} ", payload.len()).into_bytes();
    r.extend_from_slice(payload);
    r
}

/// A raw connection: write any bytes, read reply frames.
async fn raw(addr: SocketAddr) -> Framed<TcpStream, MllpCodec> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    Framed::new(tcp, MllpCodec::new(1 << 20))
}

async fn write_raw(conn: &mut Framed<TcpStream, MllpCodec>, bytes: &[u8]) {
    conn.get_mut().write_all(bytes).await.unwrap();
}

async fn next_reply(conn: &mut Framed<TcpStream, MllpCodec>) -> Bytes {
    match tokio::time::timeout(WAIT, conn.next()).await {
        Ok(Some(Ok(Inbound::Message(m)))) => m,
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// Waits until the server closes `stream` (EOF or reset); returns how long it took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn timeouts(metrics: &MllpMetrics, kind: &'static str) -> u64 {
    metrics
        .timeouts
        .get_or_create(&TimeoutLabels { kind })
        .get()
}

async fn client(addr: SocketAddr) -> MllpClient {
    MllpClient::connect(addr, None, WAIT).await.unwrap()
}

#[tokio::test]
async fn a_frame_sent_one_byte_at_a_time() {
    let server = start(settings()).await;
    let payload = b"MSH|^~\\&|RIS|X\rPID|1\nPV1|1\r\nOBR|1\r";
    let mut conn = raw(server.addr).await;
    for b in frame(payload) {
        write_raw(&mut conn, &[b]).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(&next_reply(&mut conn).await[..], &ack(payload)[..]);
    assert_eq!(server.handler.seen(), vec![Seen::Message(payload.to_vec())]);
}

#[tokio::test]
async fn several_frames_in_one_write_are_handled_in_order() {
    let server = start(settings()).await;
    let mut conn = raw(server.addr).await;
    let mut bytes = Vec::new();
    for i in 0..5 {
        bytes.extend(frame(format!("MSH|{i}").as_bytes()));
    }
    write_raw(&mut conn, &bytes).await;
    for i in 0..5 {
        let payload = format!("MSH|{i}");
        assert_eq!(
            &next_reply(&mut conn).await[..],
            &ack(payload.as_bytes())[..]
        );
    }
    assert_eq!(server.metrics.frames.get(), 5);
}

#[tokio::test]
async fn garbage_before_the_start_byte_is_skipped_and_counted() {
    let server = start(settings()).await;
    let mut conn = raw(server.addr).await;
    let mut bytes = b"\r\nnoise".to_vec();
    bytes.extend(frame(b"MSH|1"));
    bytes.extend(b"\n");
    bytes.extend(frame(b"MSH|2"));
    write_raw(&mut conn, &bytes).await;
    assert_eq!(&next_reply(&mut conn).await[..], &ack(b"MSH|1")[..]);
    assert_eq!(&next_reply(&mut conn).await[..], &ack(b"MSH|2")[..]);
    assert_eq!(server.metrics.garbage_bytes.get(), 8);
}

#[tokio::test]
async fn an_oversize_frame_gets_its_head_and_the_connection_carries_on() {
    let server = start(MllpServerSettings {
        max_frame_bytes: 64 * 1024,
        ..settings()
    })
    .await;
    let mut big = b"MSH|^~\\&|RIS|SITE|||20250101||ORU^R01|CTRL123|P|2.5\r".to_vec();
    big.resize(1_000_000, b'x');
    let mut conn = raw(server.addr).await;
    let bytes = frame(&big);
    // In pieces, as a real sender would.
    for chunk in bytes.chunks(7919) {
        write_raw(&mut conn, chunk).await;
    }
    assert_eq!(
        &next_reply(&mut conn).await[..],
        b"AR size=1000000 head=4096"
    );
    write_raw(&mut conn, &frame(b"MSH|next")).await;
    assert_eq!(&next_reply(&mut conn).await[..], &ack(b"MSH|next")[..]);
    let seen = server.handler.seen();
    assert_eq!(
        seen[0],
        Seen::TooLarge {
            head: big[..4096].to_vec(),
            size: 1_000_000
        }
    );
    assert_eq!(server.metrics.frames_too_large.get(), 1);
}

#[tokio::test]
async fn a_connection_dropped_mid_frame_never_reaches_the_handler() {
    let server = start(settings()).await;
    let mut conn = raw(server.addr).await;
    write_raw(&mut conn, b"\x0bMSH|^~\\&|partial").await;
    drop(conn);
    let metrics = server.metrics.clone();
    eventually("the truncated frame to be counted", || {
        metrics.frames_truncated.get() == 1
    })
    .await;
    assert!(server.handler.seen().is_empty());
    assert_eq!(server.metrics.frames.get(), 0);
    // The server is fine.
    let mut c = client(server.addr).await;
    assert_eq!(
        &c.call(b"MSH|ok", WAIT).await.unwrap()[..],
        &ack(b"MSH|ok")[..]
    );
    eventually("the gauge to drop", || metrics.connections_open.get() == 1).await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_garbage_does_not_keep_it_open() {
    let server = start(MllpServerSettings {
        idle_timeout_secs: 1,
        ..settings()
    })
    .await;
    let mut quiet = TcpStream::connect(server.addr).await.unwrap();
    let noisy = TcpStream::connect(server.addr).await.unwrap();
    let (mut noisy_rd, mut noisy_wr) = noisy.into_split();
    let drip = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if noisy_wr.write_all(b"\n").await.is_err() {
                return;
            }
        }
    });
    let took = closed_within(&mut quiet, WAIT).await;
    assert!(took >= Duration::from_millis(900), "{took:?}");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, noisy_rd.read(&mut buf))
        .await
        .expect("garbage must not reset the idle timer");
    assert!(matches!(n, Ok(0) | Err(_)));
    drip.abort();
    assert_eq!(timeouts(&server.metrics, "idle"), 2);
    assert!(server.handler.seen().is_empty());
}

#[tokio::test]
async fn a_slow_sender_is_closed_by_the_frame_timeout() {
    let server = start(MllpServerSettings {
        frame_timeout_secs: 1,
        idle_timeout_secs: 60,
        ..settings()
    })
    .await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    // A byte every 200 ms: data keeps coming, but the frame never finishes in time.
    let drip = tokio::spawn(async move {
        for b in b"\x0bMSH|^~\\&|slow|sender|that|never|finishes"
            .iter()
            .cycle()
        {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, rd.read(&mut buf))
        .await
        .expect("a slow frame must be cut");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert!(started.elapsed() >= Duration::from_millis(900));
    drip.abort();
    assert_eq!(timeouts(&server.metrics, "frame"), 1);
    assert_eq!(timeouts(&server.metrics, "idle"), 0);
    assert!(server.handler.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_at_once() {
    let server = start(settings()).await;
    let addr = server.addr;
    let tasks: Vec<_> = (0..200)
        .map(|c| {
            tokio::spawn(async move {
                let mut client = client(addr).await;
                for i in 0..5 {
                    let msg = format!("MSH|^~\\&|c{c}|m{i}\rPID|1\r");
                    let reply = client.call(msg.as_bytes(), WAIT).await.unwrap();
                    assert_eq!(&reply[..], &ack(msg.as_bytes())[..]);
                }
            })
        })
        .collect();
    for t in futures::future::join_all(tasks).await {
        t.unwrap();
    }
    assert_eq!(server.metrics.frames.get(), 1000);
    assert_eq!(server.metrics.connections.get(), 200);
    // Per connection the order held.
    let seen = server.handler.seen();
    for c in 0..200 {
        let prefix = format!("MSH|^~\\&|c{c}|");
        let order: Vec<_> = seen
            .iter()
            .filter_map(|s| match s {
                Seen::Message(m) if m.starts_with(prefix.as_bytes()) => {
                    Some(m[prefix.len()..prefix.len() + 2].to_vec())
                }
                _ => None,
            })
            .collect();
        let expected: Vec<_> = (0..5).map(|i| format!("m{i}").into_bytes()).collect();
        assert_eq!(order, expected);
    }
}

#[tokio::test]
async fn a_later_reply_on_the_same_connection_and_none_after_it_closes() {
    let server = start(settings()).await;
    let mut c = client(server.addr).await;
    assert_eq!(&c.call(b"LATE|1", WAIT).await.unwrap()[..], b"COMMIT");
    assert_eq!(&c.recv(WAIT).await.unwrap()[..], b"APP");
    // Ordinary traffic continues afterwards.
    assert_eq!(
        &c.call(b"MSH|2", WAIT).await.unwrap()[..],
        &ack(b"MSH|2")[..]
    );

    c.call(b"KEEP", WAIT).await.unwrap();
    let kept = server.handler.kept.lock().unwrap().clone().unwrap();
    assert!(!kept.is_closed());
    assert_eq!(
        kept.reply("bad\x1c\rreply").await,
        Err(ReplyError::FramingBytesInPayload)
    );
    drop(c);
    eventually("the connection to close", || kept.is_closed()).await;
    assert_eq!(kept.reply("too late").await, Err(ReplyError::Closed));
}

#[tokio::test]
async fn recv_without_a_reply_times_out_and_the_client_sees_the_close() {
    let server = start(MllpServerSettings {
        idle_timeout_secs: 1,
        ..settings()
    })
    .await;
    let mut c = client(server.addr).await;
    assert!(matches!(
        c.recv(Duration::from_millis(100)).await,
        Err(ClientError::ReplyTimeout(_))
    ));
    assert!(matches!(c.recv(WAIT).await, Err(ClientError::Closed)));
}

#[tokio::test]
async fn tls_round_trip_with_a_client_certificate() {
    let pki = Pki::new();
    let server = start(MllpServerSettings {
        tls: Some(pki.server_tls(true)),
        ..settings()
    })
    .await;
    let ca = pki.ca_file();
    let (engine, engine_key) = pki.issue_files("engine", "lab-engine", &[]);
    let tls = ClientTls::from_pem_files(&ca, Some((&engine, &engine_key)), "localhost").unwrap();
    let mut c = MllpClient::connect(server.addr, Some(&tls), WAIT)
        .await
        .unwrap();
    assert_eq!(&c.call(b"CN", WAIT).await.unwrap()[..], b"CN=lab-engine");
    let msg = b"MSH|^~\\&|over|tls\rPID|1\r";
    assert_eq!(&c.call(msg, WAIT).await.unwrap()[..], &ack(msg)[..]);

    // No client certificate: refused (at the handshake or at the first exchange).
    let anonymous = ClientTls::from_pem_files(&ca, None, "localhost").unwrap();
    if let Ok(mut c) = MllpClient::connect(server.addr, Some(&anonymous), WAIT).await {
        assert!(c.call(b"CN", WAIT).await.is_err());
    }
    // Plain MLLP to the TLS port gets no answer.
    let mut plain = client(server.addr).await;
    assert!(plain.call(b"MSH|plain", WAIT).await.is_err());
    assert_eq!(server.handler.seen().len(), 2);
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let server = start(MllpServerSettings {
        max_connections: 2,
        ..settings()
    })
    .await;
    let mut a = client(server.addr).await;
    let mut b = client(server.addr).await;
    a.call(b"MSH|a", WAIT).await.unwrap();
    b.call(b"MSH|b", WAIT).await.unwrap();
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    let _ = extra.write_all(&frame(b"MSH|extra")).await;
    closed_within(&mut extra, WAIT).await;
    assert_eq!(server.metrics.connections_rejected.get(), 1);
    assert_eq!(server.metrics.connections_open.get(), 2);
    // A slot frees up when a connection closes.
    drop(a);
    let started = Instant::now();
    loop {
        let mut c = client(server.addr).await;
        if c.call(b"MSH|again", Duration::from_millis(500))
            .await
            .is_ok()
        {
            break;
        }
        assert!(started.elapsed() < WAIT, "no slot freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.call(b"MSH|b2", WAIT).await.unwrap();
    assert!(
        !server
            .handler
            .seen()
            .contains(&Seen::Message(b"MSH|extra".to_vec()))
    );
}

#[tokio::test]
async fn shutdown_lets_the_frame_in_hand_finish() {
    let server = start(settings()).await;
    let mut busy = client(server.addr).await;
    let mut idle = client(server.addr).await;
    idle.call(b"MSH|1", WAIT).await.unwrap();
    busy.send(b"SLOW|1").await.unwrap();
    let metrics = server.metrics.clone();
    eventually("the slow frame to arrive", || metrics.frames.get() == 2).await;
    server.shutdown.cancel();
    assert_eq!(&busy.recv(WAIT).await.unwrap()[..], &ack(b"SLOW|1")[..]);
    assert!(matches!(busy.recv(WAIT).await, Err(ClientError::Closed)));
    assert!(matches!(idle.recv(WAIT).await, Err(ClientError::Closed)));
    tokio::time::timeout(WAIT, server.task)
        .await
        .expect("serve ends after shutdown")
        .unwrap();
    assert!(TcpStream::connect(server.addr).await.is_err());
}

/// Everything runs on this thread (current-thread runtime), so a thread-local subscriber
/// sees the server's logs.
#[tokio::test]
async fn logs_carry_sizes_and_counts_not_payloads() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.subscriber("trace"));

    const PHI: &str = "Quincebottom^Philippa";
    let server = start(MllpServerSettings {
        max_frame_bytes: 2048,
        ..settings()
    })
    .await;
    let mut conn = raw(server.addr).await;
    let junk = format!("junk {PHI} junk");
    let mut bytes = junk.clone().into_bytes();
    bytes.extend(frame(format!("MSH|1\rPID|1||123||{PHI}\r").as_bytes()));
    let mut big = format!("MSH|2\rPID|1||123||{PHI}\r").into_bytes();
    big.resize(10_000, b'x');
    bytes.extend(frame(&big));
    write_raw(&mut conn, &bytes).await;
    next_reply(&mut conn).await;
    next_reply(&mut conn).await;
    write_raw(&mut conn, format!("\x0bMSH|3\rPID|1||{PHI}").as_bytes()).await;
    drop(conn);
    let metrics = server.metrics.clone();
    eventually("the truncated frame", || {
        metrics.frames_truncated.get() == 1
    })
    .await;

    let logs = capture.text();
    assert!(logs.contains("MLLP connection opened"), "{logs}");
    assert!(logs.contains("too large"), "{logs}");
    let garbage = format!("garbage_bytes={}", junk.len());
    assert!(logs.contains(&garbage), "{logs}");
    assert!(logs.contains("discarded_bytes="), "{logs}");
    assert!(!logs.contains("Quincebottom"), "{logs}");
    assert!(!logs.contains("Philippa"), "{logs}");
}

#[tokio::test]
async fn client_errors_for_oversize_and_cut_replies() {
    // A fake peer: answers the first frame with a reply too large for the client, then
    // starts a reply and hangs up in the middle of it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn = Framed::new(stream, MllpCodec::new(1 << 20));
        assert!(matches!(conn.next().await, Some(Ok(Inbound::Message(_)))));
        write_raw(&mut conn, &frame(&vec![b'r'; 5000])).await;
        write_raw(&mut conn, b"\x0bMSA|AA|cut").await;
    });
    let mut c = client(addr).await.with_max_reply_bytes(1024);
    match c.call(b"MSH|1", WAIT).await {
        Err(ClientError::OversizeReply { size, max }) => assert_eq!((size, max), (5000, 1024)),
        other => panic!("unexpected {other:?}"),
    }
    peer.await.unwrap();
    match c.recv(WAIT).await {
        Err(ClientError::ClosedMidFrame { bytes }) => assert_eq!(bytes, 10),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        c.send(b"bad\x0bmessage").await,
        Err(ClientError::InvalidMessage)
    ));
}

#[tokio::test]
async fn invalid_settings_do_not_start() {
    let err = qubs_bridge::mllp::start(
        &MllpServerSettings {
            idle_timeout_secs: 0,
            ..settings()
        },
        Arc::new(TestHandler::default()),
        Arc::new(MllpMetrics::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("idle_timeout_secs"), "{err}");
}
