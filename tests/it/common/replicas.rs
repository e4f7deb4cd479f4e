//! Replicas of the real binary (`qubs-bridge serve`) on one PostgreSQL database, for the
//! tests of several replicas: each a child process with its own admin, gRPC and MLLP ports,
//! its log in a file, killed with SIGKILL or stopped with SIGTERM as a test needs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qubs-bridge");

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A loopback port that refuses every connection for as long as the returned socket
/// lives: bound, never listening. A port merely found free could be taken meanwhile by
/// another test's server, whose answers would stand in for a QUBS that cannot be reached.
pub fn refusing_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// One replica process.
pub struct Replica {
    pub name: String,
    pub admin: SocketAddr,
    pub grpc: SocketAddr,
    pub mllp: SocketAddr,
    pub log: PathBuf,
    config: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Replica {
    /// Writes `config` (a TOML body without `[server]` and `[mllp]`, which are added with
    /// fresh ports) to `dir` and starts the replica with `env`.
    pub fn start(dir: &Path, name: &str, config: &str, env: &[(String, String)]) -> Replica {
        let (admin, grpc, mllp) = (free_addr(), free_addr(), free_addr());
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "{config}
[server]
admin_listen = \"{admin}\"
grpc_listen = \"{grpc}\"
shutdown_grace_secs = 5
qubs_probe_interval_secs = 3600
[mllp]
enabled = true
listen = \"{mllp}\"
domain = \"acme\"
"
            ),
        )
        .unwrap();
        let mut replica = Replica {
            name: name.to_string(),
            admin,
            grpc,
            mllp,
            log: dir.join(format!("{name}.log")),
            config: path,
            env: env.to_vec(),
            child: None,
        };
        replica.spawn();
        replica
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("QUBS_BRIDGE__QUBS__CLIENT_SECRET", super::CLIENT_SECRET)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the binary starts");
        self.child = Some(child);
    }

    /// Waits until the service is up: the admin endpoint answers and the MLLP listener
    /// (started last but one, before gRPC) takes connections.
    pub async fn wait_up(&self) {
        let started = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(format!("http://{}/healthz", self.admin)).await
                && r.status().is_success()
                && tokio::net::TcpStream::connect(self.grpc).await.is_ok()
                && tokio::net::TcpStream::connect(self.mllp).await.is_ok()
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "replica {} did not start; log:\n{}",
                self.name,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: no warning, nothing finishes.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the process to end.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: a signal to our own child, which has not been waited for.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same ports and configuration.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub async fn admin_text(&self, page: &str) -> Option<String> {
        reqwest::get(format!("http://{}{page}", self.admin))
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    /// A metric's value with exactly these labels (`name{labels}`), when exported.
    pub async fn metric(&self, name_and_labels: &str) -> Option<f64> {
        let text = self.admin_text("/metrics").await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
    }

    /// Whether this replica leads `role` (`store_leader` is 1), e.g.
    /// `role="deliver",destination="ris"`.
    pub async fn leads(&self, labels: &str) -> bool {
        self.metric(&format!("qubs_bridge_store_leader{{{labels}}}"))
            .await
            == Some(1.0)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The gRPC endpoint.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `[qubs]`, `[mappings]`, `[results]` and `[telemetry]` sections for a simulator, and a
/// gRPC caller (`GRPC_TOKEN`, domain acme). `extra` is appended (more sections).
pub fn config(sim: &qubs_bridge::simulator::RunningSimulator, extra: &str) -> String {
    format!(
        r#"
[qubs]
base_url = "{base}"
token_url = "{token}"
client_id = "{client}"
domains = ["acme"]
request_timeout_ms = 1000
[qubs.retry]
initial_backoff_ms = 20
max_backoff_ms = 200
max_elapsed_ms = 3000
max_attempts = 3
[[grpc.clients]]
name = "engine"
token_sha256 = "{token_hash}"
domains = ["acme"]
[mappings]
dir = "{mappings}"
watch = false
[telemetry]
log_format = "json"
log_filter = "warn,qubs_bridge::store=info"
{extra}
"#,
        base = sim.base_url(),
        token = sim.token_url(),
        client = super::CLIENT_ID,
        token_hash = qubs_bridge::grpc::auth::hash_token(super::GRPC_TOKEN),
        mappings = concat!(env!("CARGO_MANIFEST_DIR"), "/mappings"),
    )
}
