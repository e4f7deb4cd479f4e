//! A scriptable MLLP feed consumer on loopback, for the order feed's tests: it records
//! every message and answers each as its script says (by ORC-2.1, the appointment id).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use qubs_bridge::mllp::{Inbound, MllpCodec};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::codec::FramedRead;

/// How the consumer answers one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// An ACK with this MSA-1.
    Ack(&'static str),
    /// A frame that is not HL7.
    Malformed,
    /// An AA for another control id.
    WrongControlId,
    /// Half a frame, then the connection closes.
    CloseMidFrame,
    /// No answer at all (the connection stays open).
    Silent,
}

/// One message as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub control_id: String,
    /// ORC-1.
    pub order_control: String,
    /// ORC-2.1.
    pub appointment_id: String,
    pub text: String,
    pub reply: Reply,
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    scripts: HashMap<String, VecDeque<Reply>>,
    /// How long each answer takes (a slow consumer).
    delay: Duration,
    /// Connections accepted so far.
    connections: usize,
}

pub struct Consumer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn field<'a>(text: &'a str, segment: &str, n: usize) -> &'a str {
    text.split(['\r', '\n'])
        .find(|s| s.starts_with(segment))
        .and_then(|s| s.split('|').nth(n))
        .unwrap_or("")
}

impl Consumer {
    /// Listens on a free loopback port; answers AA unless scripted otherwise.
    pub async fn start() -> Consumer {
        Consumer::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Listens on `addr` (to bring a destination that was down back up).
    pub async fn start_on(addr: SocketAddr) -> Consumer {
        let listener = TcpListener::bind(addr).await.expect("consumer binds");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                shared.lock().unwrap().connections += 1;
                tokio::spawn(serve(socket, shared.clone()));
            }
        });
        Consumer { addr, state, task }
    }

    /// The next answers for messages of `appointment_id`; AA after them.
    pub fn script(&self, appointment_id: &str, replies: &[Reply]) {
        self.state.lock().unwrap().scripts.insert(
            appointment_id.to_string(),
            replies.iter().cloned().collect(),
        );
    }

    /// Answers each message only after `delay`.
    pub fn slow_down(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Messages answered AA, in arrival order.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.reply == Reply::Ack("AA"))
            .collect()
    }

    /// Waits until `n` messages were answered AA; panics after `limit`.
    pub async fn wait_accepted(&self, n: usize, limit: Duration) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let accepted = self.accepted();
            if accepted.len() >= n {
                return accepted;
            }
            assert!(
                started.elapsed() < limit,
                "waited {limit:?} for {n} accepted messages, got {}: {:?}",
                accepted.len(),
                self.received()
                    .iter()
                    .map(|r| (&r.appointment_id, &r.order_control, &r.reply))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn serve(socket: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let (read, mut write) = socket.into_split();
    let mut frames = FramedRead::new(read, MllpCodec::new(1 << 20));
    while let Some(Ok(Inbound::Message(bytes))) = frames.next().await {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let control_id = field(&text, "MSH", 9).to_string();
        let appointment_id = field(&text, "ORC", 2)
            .split('^')
            .next()
            .unwrap_or("")
            .to_string();
        let delay = state.lock().unwrap().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let reply = {
            let mut s = state.lock().unwrap();
            let reply = s
                .scripts
                .get_mut(&appointment_id)
                .and_then(VecDeque::pop_front)
                .unwrap_or(Reply::Ack("AA"));
            s.received.push(Received {
                control_id: control_id.clone(),
                order_control: field(&text, "ORC", 1).to_string(),
                appointment_id,
                text: text.clone(),
                reply,
            });
            reply
        };
        let ack = |code: &str, id: &str| {
            format!(
                "\x0bMSH|^~\\&|RIS|HOSP|QUBS|SITE|20261127120000||ACK^O01^ACK|ACK{id}|P|2.5.1\rMSA|{code}|{id}\r\x1c\r"
            )
        };
        let out = match reply {
            Reply::Ack(code) => ack(code, &control_id),
            Reply::Malformed => "\x0bthis is not an ACK\x1c\r".to_string(),
            Reply::WrongControlId => ack("AA", "SOMETHING-ELSE"),
            Reply::CloseMidFrame => {
                let _ = write.write_all(b"\x0bMSH|^~\\&|RIS|HOSP").await;
                return;
            }
            Reply::Silent => continue,
        };
        if write.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}
