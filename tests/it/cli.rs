//! The `qubs-bridge` binary: configuration checks, the standalone simulator, and
//! `serve --demo` end to end (start, ready, graceful shutdown on SIGTERM, no PHI in logs).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qubs-bridge");

/// The binary with a clean QUBS_BRIDGE environment.
pub(crate) fn bridge() -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("QUBS_BRIDGE") || k == "RUST_LOG" || k == "QUBS_SIMULATOR_CLIENT_SECRET" {
            cmd.env_remove(k);
        }
    }
    cmd
}

pub(crate) fn write_config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("bridge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) const VALID: &str = r#"
[qubs]
base_url = "https://qubs.example.test/integrations/v1"
token_url = "https://auth.example.test/oauth2/token"
client_id = "bridge"
domains = ["acme", "globex"]

[mllp]
domain = "acme"
"#;

#[test]
fn config_check_accepts_a_valid_file_and_never_prints_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, VALID);
    let out = bridge()
        .args(["config", "check"])
        .arg(&path)
        .env("QUBS_BRIDGE__QUBS__CLIENT_SECRET", "pw-41d7c2")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration OK"));
    assert!(stdout.contains("acme, globex"));
    assert!(!stdout.contains("pw-41d7c2"));
}

/// Runs `config check` and returns (exit code, stderr).
fn check(config: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, config);
    let mut cmd = bridge();
    cmd.args(["config", "check"]).arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[test]
fn bad_configuration_gives_the_promised_messages() {
    let secret = [("QUBS_BRIDGE__QUBS__CLIENT_SECRET", "x")];
    let (code, err) = check(VALID, &[]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: configuration key `qubs.client_secret`: missing: set QUBS_BRIDGE__QUBS__CLIENT_SECRET or qubs.client_secret_file"
    );

    let (code, err) = check(VALID, &[secret[0], ("QUBS_BRIDGE__QUBS__PAGE_SIZE", "0")]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: configuration key `qubs.page_size`: must be between 1 and 500 (got 0)"
    );

    let (code, err) = check(
        VALID,
        &[secret[0], ("QUBS_BRIDGE__QUBS__PAGE_SIZE", "lots")],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("qubs.page_size") && err.contains("integer"),
        "{err}"
    );

    let (code, err) = check(
        &VALID.replace("https://qubs.example.test", "ftp://x"),
        &secret,
    );
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: configuration key `qubs.base_url`: "),
        "{err}"
    );
    assert!(err.contains("http(s)"), "{err}");

    let (code, err) = check(&format!("{VALID}page_sise = 5\n"), &secret);
    assert_eq!(code, 2);
    assert!(err.contains("page_sise"), "unknown keys are named: {err}");

    let (code, err) = check("[qubs\nbase_url = 1", &secret);
    assert_eq!(code, 2);
    assert!(
        err.contains("bridge.toml") && err.contains("line 1"),
        "{err}"
    );

    let (code, err) = check(
        VALID,
        &[(
            "QUBS_BRIDGE__QUBS__CLIENT_SECRET_FILE",
            "/nonexistent/secret",
        )],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("qubs.client_secret_file") && err.contains("/nonexistent/secret"),
        "{err}"
    );

    let (code, err) = check(
        VALID,
        &[secret[0], ("QUBS_BRIDGE__SERVER__GRPC_LISTEN", "localhost")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("server.grpc_listen"), "{err}");

    let (code, err) = check(
        VALID,
        &[secret[0], ("QUBS_BRIDGE__QUBS__DOMAINS", "acme,bad domain")],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("qubs.domains") && err.contains("bad domain"),
        "{err}"
    );
}

#[test]
fn serve_refuses_to_start_on_bad_configuration() {
    let out = bridge()
        .arg("serve")
        .env(
            "QUBS_BRIDGE__QUBS__BASE_URL",
            "https://q.test/integrations/v1",
        )
        .env(
            "QUBS_BRIDGE__QUBS__TOKEN_URL",
            "https://q.test/oauth2/token",
        )
        .env("QUBS_BRIDGE__QUBS__CLIENT_SECRET", "x")
        .env("QUBS_BRIDGE__QUBS__RETRY__MAX_ATTEMPTS", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one clear message: {err}");
    assert!(
        err.contains("`qubs.retry.max_attempts`: must be at least 1"),
        "{err}"
    );
}

/// Reads the child's stdout up to the line containing `marker`; returns the lines read.
pub(crate) fn read_until(child: &mut Child, marker: &str) -> Vec<String> {
    let stdout = child.stdout.as_mut().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut lines = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("no line with {marker:?} on stdout: {lines:?}");
        }
        lines.push(line.trim().to_string());
        if line.contains(marker) {
            return lines;
        }
    }
}

/// The last word of the first line containing `marker`.
pub(crate) fn last_word(lines: &[String], marker: &str) -> String {
    lines
        .iter()
        .find(|l| l.contains(marker))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no {marker:?} in {lines:?}"))
        .to_string()
}

pub(crate) fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

pub(crate) fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    wait_exit_within(child, within)
        .unwrap_or_else(|| panic!("process did not exit within {within:?}"))
}

/// The child's exit status, or `None` (and the child killed) when it runs past `within`.
pub(crate) fn wait_exit_within(
    child: &mut Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_demo_becomes_ready_shuts_down_cleanly_and_logs_no_phi() {
    let secret = "demo-secret-5c0ffee";
    let mut child = bridge()
        .args(["serve", "--demo"])
        .env("QUBS_BRIDGE__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .env("QUBS_BRIDGE__SERVER__GRPC_LISTEN", "127.0.0.1:0")
        .env("QUBS_BRIDGE__MLLP__LISTEN", "127.0.0.1:0")
        .env("QUBS_SIMULATOR_CLIENT_SECRET", secret)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain stderr on a thread so the child never blocks on a full pipe.
    let stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s).unwrap();
        s
    });
    let lines = read_until(&mut child, "admin endpoint");
    let url = last_word(&lines, "admin endpoint");
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let resp = reqwest::blocking::get(&url).unwrap();
        if resp.status() == 200 {
            break resp.text().unwrap();
        }
        assert!(Instant::now() < deadline, "never became ready");
        std::thread::sleep(Duration::from_millis(100));
    };
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true);
    assert!(ready["domains"]["acme"]["pending"].as_u64().unwrap() >= 24);
    assert_eq!(ready["domains"]["acme"]["sites"], 4);

    sigterm(&child);
    let exited = wait_exit_within(&mut child, Duration::from_secs(20));
    let logs = logs.join().unwrap();
    let Some(status) = exited else {
        // What it was still doing: the last lines of its (trace) log.
        let tail: Vec<&str> = logs.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "process did not exit within 20 s of SIGTERM; its last log lines:\n{}",
            tail.join("\n")
        );
    };
    assert_eq!(status.code(), Some(0), "graceful exit on SIGTERM");
    assert!(logs.contains("QUBS domain ready"), "logs were captured");
    assert!(logs.contains("SIGTERM"));
    assert!(
        !logs.contains(secret),
        "the client secret leaked into the logs"
    );
    for name in qubs_bridge::simulator::demo_patient_names() {
        assert!(
            !logs.contains(&name),
            "patient name {name:?} leaked into the logs"
        );
    }
}

#[test]
fn the_standalone_simulator_prints_working_credentials() {
    let mut child = bridge()
        .args(["simulator", "--port", "0"])
        .env("QUBS_SIMULATOR_CLIENT_SECRET", "sim-secret-1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = read_until(&mut child, "token URL");
    let token_url = last_word(&lines, "token URL");
    let resp = reqwest::blocking::Client::new()
        .post(&token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "qubs-bridge-demo"),
            ("client_secret", "sim-secret-1"),
        ])
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    sigterm(&child);
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(10)).code(),
        Some(0)
    );
}

/// Runs a CLI client command against `server` with the demo token.
pub(crate) fn client(server: &str, args: &[&str]) -> (bool, String, String) {
    let out = bridge()
        .args(args)
        .env("QUBS_BRIDGE_SERVER", server)
        .env("QUBS_BRIDGE_TOKEN", "demo-token")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `serve --demo` on free loopback ports; stopped (SIGTERM) when dropped.
pub(crate) struct Demo {
    pub child: Child,
    /// `http://127.0.0.1:PORT`, the gRPC API.
    pub server: String,
    /// `127.0.0.1:PORT`, the MLLP listener for results.
    pub mllp: String,
    /// `http://127.0.0.1:PORT`, the embedded simulator (its `/_simulator/` control endpoints).
    pub simulator: String,
    /// `http://localhost:PORT/console/`, the web console, as the banner prints it.
    pub console: String,
    /// The bridge's log (stderr), shown when it does not stop in time.
    log: tempfile::NamedTempFile,
}

impl Demo {
    pub fn start() -> Demo {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = bridge()
            .args(["serve", "--demo", "--feed-to", "127.0.0.1:9"])
            .env("QUBS_BRIDGE__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
            .env("QUBS_BRIDGE__SERVER__GRPC_LISTEN", "127.0.0.1:0")
            .env("QUBS_BRIDGE__MLLP__LISTEN", "127.0.0.1:0")
            // A QUBS that fails (tests inject faults) answers after two attempts, not eight.
            .env("QUBS_BRIDGE__QUBS__RETRY__MAX_ATTEMPTS", "2")
            // Work still in flight at SIGTERM gets 10 s, inside the 20 s the drop waits:
            // these tests are about the CLI; service_lifecycle tests the shutdown itself.
            .env("QUBS_BRIDGE__SERVER__SHUTDOWN_GRACE_SECS", "10")
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let lines = read_until(&mut child, "web console");
        let console = lines
            .iter()
            .find_map(|l| l.split_once("web console: ")?.1.split_whitespace().next())
            .unwrap()
            .to_string();
        let simulator = lines
            .iter()
            .find_map(|l| {
                l.split_once("simulator at ")?
                    .1
                    .split("/integrations")
                    .next()
            })
            .unwrap()
            .to_string();
        Demo {
            server: format!("http://{}", last_word(&lines, "gRPC API on")),
            mllp: last_word(&lines, "MLLP listener"),
            simulator,
            console,
            child,
            log,
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        sigterm(&self.child);
        if wait_exit_within(&mut self.child, Duration::from_secs(20)).is_none()
            && !std::thread::panicking()
        {
            // What the bridge was doing: its log says which task it was still waiting for.
            let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "the demo did not exit within 20 s of SIGTERM; its log ends:\n{}",
                tail.join("\n")
            );
        }
    }
}

#[test]
fn the_cli_client_reads_the_demo_orders_over_grpc() {
    let mut child = bridge()
        .args(["serve", "--demo"])
        .env("QUBS_BRIDGE__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .env("QUBS_BRIDGE__SERVER__GRPC_LISTEN", "127.0.0.1:0")
        .env("QUBS_BRIDGE__MLLP__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = read_until(&mut child, "admin endpoint");
    let server = format!("http://{}", last_word(&lines, "gRPC API on"));

    let (ok, out, err) = client(&server, &["orders", "list", "--page-size", "5"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("APPOINTMENT"), "{out}");
    assert_eq!(
        out.lines().count(),
        6,
        "a header and a row per order: {out}"
    );
    assert!(out.contains("PENDING REPORTING"), "{out}");
    // Where the page ends is a note: stdout holds only orders.
    assert!(err.contains("5 orders; next page: --page-token"), "{err}");

    let (ok, out, err) = client(
        &server,
        &["orders", "list", "--format", "json", "--page-size", "2"],
    );
    assert!(ok, "{err}");
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let id = first["appointmentId"].as_str().unwrap().to_string();
    assert_eq!(
        first["outputs"][0]["content"]["appointment"]["appointmentId"],
        id.as_str()
    );

    let (ok, out, err) = client(&server, &["orders", "get", &id]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("appointment  {id}")) && out.contains("attachments"),
        "{out}"
    );

    let (ok, _, err) = client(&server, &["orders", "stream", "--count-only"]);
    assert!(ok, "{err}");
    assert!(err.contains("40 orders in"), "{err}");

    let (ok, out, err) = client(
        &server,
        &[
            "oru",
            "submit",
            "tests/data/demo-oru-A100001.hl7",
            "--show-ack",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.starts_with("AA  tests/data/demo-oru-A100001.hl7  A100001 -> report "),
        "{out}"
    );
    assert!(out.contains("MSA|AA|DEMO0001"), "{out}");

    // The README's MLLP step: a preliminary after that final is refused.
    let dir = tempfile::tempdir().unwrap();
    let prelim = dir.path().join("prelim.hl7");
    std::fs::write(
        &prelim,
        std::fs::read_to_string("tests/data/demo-oru-A100001.hl7")
            .unwrap()
            .replace("DEMO0001", "DEMO0002")
            .replace("|F|||||||2045671A", "|P|||||||2045671A"),
    )
    .unwrap();
    let mllp = last_word(&lines, "MLLP listener");
    let (ok, out, _) = client(
        &server,
        &["mllp", "send", "--to", &mllp, prelim.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(
        out.starts_with(&format!("AE  {}  ERR||OBR^1^25|207^Application internal error^HL70357|E||||appointment A100001 already has a final report", prelim.display())),
        "{out}"
    );
    let (ok, out, err) = client(&server, &["outbox", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("submitted") && out.contains("A100001"),
        "{out}"
    );
    assert!(err.contains("outbox: 0 pending"), "{err}");

    let text = dir.path().join("report.txt");
    std::fs::write(&text, "Addendum: no change.").unwrap();
    let (ok, out, err) = client(
        &server,
        &[
            "report",
            "submit",
            "--appointment",
            "A100002",
            "--status",
            "final",
            "--text-file",
            text.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("for appointment A100002 stored as final"),
        "{out}"
    );

    let (ok, _, err) = client(&server, &["orders", "list", "--domain", "globex"]);
    assert!(!ok);
    assert!(err.contains("PERMISSION_DENIED"), "{err}");

    let out = bridge()
        .args(["orders", "list"])
        .env("QUBS_BRIDGE_SERVER", &server)
        .env("QUBS_BRIDGE_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"));

    sigterm(&child);
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(20)).code(),
        Some(0)
    );
}

#[test]
fn grpc_new_token_prints_a_config_entry_whose_hash_matches() {
    let out = bridge()
        .args(["grpc", "new-token", "--name", "ris"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let token = text
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap();
    let hash = text
        .lines()
        .find(|l| l.starts_with("token_sha256"))
        .unwrap()
        .split('"')
        .nth(1)
        .unwrap();
    assert_eq!(qubs_bridge::grpc::auth::hash_token(token), hash);
    assert!(text.contains("name = \"ris\""));
}

#[test]
fn mapping_tools_check_test_and_map() {
    let out = bridge().args(["mappings", "check"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("OK: 5 mappings in mappings (sha256:")
    );

    let out = bridge().args(["mappings", "test"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(", 0 failed"), "{stdout}");

    // All problems of a broken copy at once, each with file:line:column and a hint.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir("mappings").unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let tables = dir.path().join("tables");
    std::fs::create_dir(&tables).unwrap();
    for entry in std::fs::read_dir("mappings/tables").unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tables.join(path.file_name().unwrap())).unwrap();
    }
    let sr = dir.path().join("service_request.yaml");
    let text = std::fs::read_to_string(&sr).unwrap();
    std::fs::write(
        &sr,
        text.replace("target: intent", "target: intnet")
            .replace("{table: priority}", "{table: priorty}"),
    )
    .unwrap();
    let out = bridge()
        .args(["mappings", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .position(|l| l.contains("target: intent"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(
            "service_request.yaml:{line}:13: error: `intnet` is not an element of ServiceRequest"
        )),
        "{err}"
    );
    assert!(err.contains("hint: did you mean `priority`?"), "{err}");
    assert!(err.contains("3 problem(s)"), "{err}");

    let out = bridge()
        .args([
            "map",
            "--mapping",
            "mappings/orm_o01.yaml",
            "--input",
            "mappings/tests/order-routine-ct/order.json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // stdout is the message alone, as sent (CR between segments); the notes are on stderr.
    assert!(stdout.starts_with("MSH|^~\\&|"), "{stdout}");
    assert!(
        !stdout.contains('\n') && !stdout.contains('#'),
        "{stdout:?}"
    );
    let segments: Vec<&str> = stdout.split_terminator('\r').collect();
    assert_eq!(segments.first().map(|s| &s[..3]), Some("MSH"));
    assert!(segments.iter().any(|s| s.starts_with("OBR|")), "{stdout:?}");
    assert!(stderr.contains("mapping orm_o01 (sha256:"), "{stderr}");
    assert!(stderr.contains("unmapped values: none"), "{stderr}");
    // The shipped mapping reads every field of this order or lists it under `not_sent`.
    assert!(!stderr.contains("input fields no rule read:"), "{stderr}");

    // `--lf` for reading; `--format json` one envelope with the same message.
    let map_json = bridge()
        .args([
            "map",
            "--mapping",
            "orm_o01",
            "--input",
            "mappings/tests/order-routine-ct/order.json",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(map_json.status.success());
    let envelope: serde_json::Value = serde_json::from_slice(&map_json.stdout).unwrap();
    assert_eq!(envelope["mapping"], "orm_o01");
    assert!(
        envelope["mappingSetVersion"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let er7 = envelope["output"].as_str().unwrap();
    assert_eq!(
        er7.split_terminator('\r').count(),
        segments.len(),
        "{er7:?}"
    );
    assert_eq!(envelope["unmapped"], serde_json::json!([]));
    // Every field of this order is read or listed under `not_sent`.
    assert_eq!(
        envelope["unreadFields"],
        serde_json::json!([]),
        "{envelope}"
    );

    // A field QUBS sends that no rule reads is listed, on stderr and in the envelope.
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("order.json");
    let mut order: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("mappings/tests/order-routine-ct/order.json").unwrap(),
    )
    .unwrap();
    order["appointment"]["referralSource"] = "GP letter".into();
    std::fs::write(&extra, order.to_string()).unwrap();
    let out = bridge()
        .args(["map", "--mapping", "orm_o01", "--input"])
        .arg(&extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("input fields no rule read:"), "{stderr}");
    assert!(stderr.contains("appointment.referralSource"), "{stderr}");
    let out = bridge()
        .args(["map", "--mapping", "orm_o01", "--format", "json", "--input"])
        .arg(&extra)
        .output()
        .unwrap();
    let envelope: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        envelope["unreadFields"],
        serde_json::json!(["appointment.referralSource"]),
        "{envelope}"
    );
    assert_eq!(envelope["errors"], serde_json::json!([]));
    let lf = bridge()
        .args([
            "map",
            "--mapping",
            "orm_o01",
            "--input",
            "mappings/tests/order-routine-ct/order.json",
            "--lf",
        ])
        .output()
        .unwrap();
    let lf = String::from_utf8_lossy(&lf.stdout);
    assert!(!lf.contains('\r'), "{lf:?}");
    assert_eq!(lf.lines().count(), segments.len(), "{lf}");

    // A mapping that fails: the envelope carries the error, the status says it failed.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("order.json");
    std::fs::write(&bad, r#"{"appointment": {}}"#).unwrap();
    let failed = bridge()
        .args(["map", "--mapping", "orm_o01", "--format", "json", "--input"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    let envelope: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(envelope["output"], serde_json::Value::Null);
    assert!(
        envelope["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("required"),
        "{envelope}"
    );

    let out = bridge()
        .args([
            "map",
            "--mapping",
            "oru_to_report",
            "--input",
            "tests/data/demo-oru-A100001.hl7",
            "--site-tz",
            "Australia/Sydney",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let submissions: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(submissions[0]["reportedAtUtc"], "2026-11-26T22:30:00Z");
}

#[test]
fn map_explain_traces_fallbacks_filter_chains_tables_and_when() {
    // An order whose sex comes from the second alternative (`gender | patientSex`), with
    // blanks the `trim` step removes before the `sex` table, and a priority no table knows.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("order.json");
    let mut order: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("mappings/tests/order-routine-ct/order.json").unwrap(),
    )
    .unwrap();
    let a = order["appointment"].as_object_mut().unwrap();
    a.remove("gender");
    a.insert("patientSex".into(), " Female ".into());
    a.insert("priority".into(), "Whenever".into());
    std::fs::write(&input, order.to_string()).unwrap();
    let yaml = std::fs::read_to_string("mappings/orm_o01.yaml").unwrap();
    let line_of = |target: &str| {
        yaml.lines()
            .position(|l| l.trim() == format!("- target: {target}"))
            .unwrap()
            + 1
    };
    let explain = |field: &str, format: &str| {
        bridge()
            .args(["map", "--mapping", "orm_o01", "--explain", "--field", field])
            .args(["--format", format, "--input"])
            .arg(&input)
            .output()
            .unwrap()
    };

    let out = explain("PID-8", "text");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = format!(
        "PID-8 in PID #2 = \"F\"\n  rule orm_o01.yaml:{}:9\n  \
         from appointment.gender = (absent)\n  \
         from appointment.patientSex = \" Female \" <- used\n  \
         | trim -> \"Female\"\n  \
         | {{table: sex}} -> \"F\" (table sex: \"Female\" found)\n",
        line_of("PID-8")
    );
    assert_eq!(stdout, expected);

    // A table miss and what the table's policy did, then the next table.
    let out = explain("ORC-7.6", "text");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "| {table: priority} -> \"routine\" (table priority: \"Whenever\" not found, default)\n"
        ) && stdout
            .contains("| {table: hl7_priority} -> \"R\" (table hl7_priority: \"routine\" found)\n"),
        "{stdout}"
    );

    // `when`: the alert's NTE-3 rule is skipped for the plain comment and taken for the
    // alert, with the values each condition tested.
    let out = explain("NTE-3", "text");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("NTE-3 in NTE #3 (skipped: `when` did not hold)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("NTE-3 in NTE #3 = \"ALERT: Contrast allergy (iodine) - premedicate\"\n  rule orm_o01.yaml:")
            && stdout.contains("  when any: true\n")
            && stdout.contains("c.commentType in [aa, pa] (ignoring case) (value \"PA\"): true"),
        "{stdout}"
    );

    // The same trace as JSON: the alternative used, the steps, the table lookup.
    let out = explain("PID-8", "json");
    assert!(out.status.success());
    let envelope: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let field = &envelope["trace"]["fields"][0];
    assert_eq!(envelope["trace"]["fields"].as_array().unwrap().len(), 1);
    assert_eq!(field["target"], "PID-8");
    assert_eq!(field["outcome"], "written");
    assert_eq!(field["value"], "F");
    assert_eq!(field["source"]["won"], 1);
    assert_eq!(
        field["source"]["alternatives"][1]["raw"],
        serde_json::json!(" Female ")
    );
    assert_eq!(field["steps"][0]["result"], "Female");
    assert_eq!(field["steps"][1]["table"]["table"], "sex");
    assert_eq!(field["steps"][1]["table"]["hit"], true);
    assert_eq!(envelope["errors"], serde_json::json!([]));

    // A field no rule writes is a usage error naming the fields there are.
    let out = explain("PID-99", "text");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no rule of `orm_o01` ran for `PID-99`") && stderr.contains("PID-8, "),
        "{stderr}"
    );

    // A failing run shows its trace up to the rule that failed, then the error.
    std::fs::write(&input, r#"{"appointment": {}}"#).unwrap();
    let out = bridge()
        .args(["map", "--mapping", "orm_o01", "--explain", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("MSH-3 "), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("required"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_demo_feed_arrives_at_mllp_listen_and_feed_status_shows_it() {
    let mut listener = bridge()
        .args(["mllp", "listen", "--port", "0", "--print", "--count", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its status lines are on stderr; stdout has only the messages.
    let mut notes = BufReader::new(listener.stderr.take().unwrap());
    let mut banner = String::new();
    notes.read_line(&mut banner).unwrap();
    assert!(banner.starts_with("MLLP receiver listening on"), "{banner}");
    let addr = banner.split_whitespace().nth(4).unwrap().to_string();
    let mut child = bridge()
        .args(["serve", "--demo", "--feed-to", &addr])
        .env("QUBS_BRIDGE__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .env("QUBS_BRIDGE__SERVER__GRPC_LISTEN", "127.0.0.1:0")
        .env("QUBS_BRIDGE__MLLP__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = read_until(&mut child, "admin endpoint");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("order feed: demo-listener")),
        "{lines:?}"
    );
    let server = format!("http://{}", last_word(&lines, "gRPC API on"));
    // The receiver stops by itself after three messages.
    let status = wait_exit(&mut listener, Duration::from_secs(60));
    assert!(status.success());
    let mut printed = String::new();
    std::io::Read::read_to_string(&mut listener.stdout.take().unwrap(), &mut printed).unwrap();
    assert_eq!(printed.matches("ORM^O01  MSH-10").count(), 3, "{printed}");
    assert_eq!(printed.matches("ORC-1 NW").count(), 3, "{printed}");
    assert!(
        printed.contains("    PID|1||"),
        "--print shows the message: {printed}"
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut notes, &mut rest).unwrap();
    assert!(rest.contains("3 message(s) received"), "{rest}");

    let (ok, out, err) = client(&server, &["feed", "status"]);
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("demo-listener"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains(&addr), "{row}");
    let (ok, out, err) = client(&server, &["feed", "status", "--format", "json"]);
    assert!(ok, "{err}");
    let s: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        s["destinations"][0]["delivered"].as_u64().unwrap() >= 3,
        "{s}"
    );
    assert_eq!(s["destinations"][0]["lastAckCode"], "AA", "{s}");
    assert_eq!(s["watches"][0]["domain"], "acme");

    let (ok, out, err) = client(
        &server,
        &[
            "feed", "watch", "--domain", "acme", "--after", "0", "--count", "2",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains(" new ")).count(),
        2,
        "{out}"
    );

    sigterm(&child);
    wait_exit(&mut child, Duration::from_secs(20));
}
