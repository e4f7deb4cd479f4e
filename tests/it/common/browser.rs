//! A headless Chromium driven over WebDriver (chromedriver), for the console's browser
//! tests. Debian's `chromium` and `chromium-driver` are installed by
//! `tests/browser/install.sh` on first use when missing (never a browser downloaded by the
//! tests); no browser, no way to install one, fails the test with what to do — it never
//! skips. The WebDriver calls are plain JSON over HTTP (the W3C protocol), made with the
//! reqwest the tests already use.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Chromium and chromedriver, installed on first use.
fn binaries() -> &'static (PathBuf, PathBuf) {
    static PATHS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    PATHS.get_or_init(|| {
        let out = Command::new("bash")
            .arg("tests/browser/install.sh")
            .output()
            .unwrap_or_else(|e| panic!("cannot run tests/browser/install.sh: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "tests/browser/install.sh could not provide Chromium and chromedriver:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lines = stdout.lines().map(|l| PathBuf::from(l.trim()));
        match (lines.next(), lines.next()) {
            (Some(browser), Some(driver)) => (browser, driver),
            _ => panic!("tests/browser/install.sh printed no paths: {stdout}"),
        }
    })
}

/// Where the browser tests write their screenshots.
pub fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// A chromedriver process and one browser session; both end when dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium session.
    pub async fn start() -> Browser {
        let (chromium, chromedriver) = binaries();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // Its own process group, so that dropping the browser ends Chromium too.
        let driver = Command::new(chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(r) = ready
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
        };
        let profile = tempfile::tempdir().expect("profile dir").keep();
        let answer = browser
            .post(
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [
                            "--headless=new", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage", "--window-size=1440,1000",
                            "--no-first-run", "--disable-extensions",
                            format!("--user-data-dir={}", profile.display()),
                        ],
                    },
                }}}),
            )
            .await;
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {answer}"))
            .to_string();
        browser
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = if path.starts_with("/session") && !self.session.is_empty() {
            format!(
                "{}/session/{}{}",
                self.base,
                self.session,
                path.trim_start_matches("/session")
            )
        } else {
            format!("{}{path}", self.base)
        };
        let mut r = self.http.request(method, url);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let answer: Value = r
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("chromedriver answers JSON");
        if answer["value"]["error"].is_string() {
            panic!("WebDriver {path}: {}", answer["value"]);
        }
        answer["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.post("/session/url", json!({"url": url})).await;
    }

    /// The page's current address.
    pub async fn url(&self) -> String {
        self.send(reqwest::Method::GET, "/session/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `script` in the page (`arguments` are `args`); returns what it returns.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.post(
            "/session/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Waits up to 15 s for an element matching `css`.
    pub async fn find(&self, css: &str) -> Element<'_> {
        let started = Instant::now();
        loop {
            let found = self
                .run(
                    "return document.querySelector(arguments[0]) !== null",
                    json!([css]),
                )
                .await;
            if found == true {
                let v = self
                    .post(
                        "/session/element",
                        json!({"using": "css selector", "value": css}),
                    )
                    .await;
                return Element {
                    browser: self,
                    id: v[ELEMENT].as_str().expect("an element id").to_string(),
                };
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "no element {css} on {}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to 15 s until the text of the element matching `css` satisfies `check`;
    /// returns that text.
    pub async fn wait_text(&self, css: &str, mut check: impl FnMut(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let text = self
                .run(
                    "const e = document.querySelector(arguments[0]); return e ? e.innerText : null",
                    json!([css]),
                )
                .await;
            if let Some(t) = text.as_str()
                && check(t)
            {
                return t.to_string();
            }
            if started.elapsed() > Duration::from_secs(15) {
                let shot = self.screenshot("failure").await;
                let page = self.run("return document.body.innerText", json!([])).await;
                panic!(
                    "{css} never showed the expected text; it shows: {text}\n\
                     the page ({}):\n{}",
                    shot.display(),
                    page.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to 15 s for a `confirm()` dialog and accepts it (clicks OK).
    pub async fn accept_dialog(&self) {
        let started = Instant::now();
        let url = format!("{}/session/{}/alert/accept", self.base, self.session);
        loop {
            let answer: Value = self
                .http
                .post(&url)
                .json(&json!({}))
                .send()
                .await
                .expect("chromedriver answers")
                .json()
                .await
                .expect("chromedriver answers JSON");
            if !answer["value"]["error"].is_string() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "no dialog to accept: {}",
                answer["value"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes a PNG of the viewport to the screenshot directory as `name.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self
            .send(reqwest::Method::GET, "/session/screenshot", None)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 PNG"))
            .expect("a PNG");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("screenshot written");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the Chromium it started: the process group this test created.
        let group = self.driver.id() as i32;
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is shared.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

/// An element of the page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Element<'_> {
    pub async fn click(&self) {
        self.browser
            .post(&format!("/session/element/{}/click", self.id), json!({}))
            .await;
    }

    /// Types `text` into the element (as keystrokes).
    pub async fn type_text(&self, text: &str) {
        self.browser
            .post(
                &format!("/session/element/{}/value", self.id),
                json!({"text": text}),
            )
            .await;
    }
}
