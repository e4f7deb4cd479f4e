//! A headless browser driven over WebDriver, for the console's browser tests: Chromium
//! through chromedriver, or Firefox through geckodriver. Debian's `chromium`,
//! `chromium-driver` and `firefox-esr` are installed, and geckodriver is built from
//! crates.io, by `tests/browser/install.sh` on first use when missing (never a browser
//! downloaded by the tests); no browser, no way to install one, fails the test with what to
//! do — it never skips. The WebDriver calls are plain JSON over HTTP (the W3C protocol),
//! made with the reqwest the tests already use, and are the same for both browsers.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The browser window's size (the screenshots show its viewport).
const WIDTH: u32 = 1440;
const HEIGHT: u32 = 1000;

/// A browser the console is tested in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Chromium,
    Firefox,
}

impl Engine {
    /// Its name for `tests/browser/install.sh`.
    fn name(self) -> &'static str {
        match self {
            Engine::Chromium => "chromium",
            Engine::Firefox => "firefox",
        }
    }

    /// The browser and its WebDriver, installed on first use.
    fn binaries(self) -> &'static (PathBuf, PathBuf) {
        static CHROMIUM: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
        static FIREFOX: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
        let paths = match self {
            Engine::Chromium => &CHROMIUM,
            Engine::Firefox => &FIREFOX,
        };
        paths.get_or_init(|| {
            let out = super::install::run_locked(
                Command::new("bash")
                    .arg("tests/browser/install.sh")
                    .arg(self.name())
                    // Where it builds geckodriver: this binary's scratch directory.
                    .env("CARGO_TARGET_TMPDIR", env!("CARGO_TARGET_TMPDIR")),
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "tests/browser/install.sh could not provide {} and its WebDriver:\n{}",
                self.name(),
                String::from_utf8_lossy(&out.stderr)
            );
            let mut lines = stdout.lines().map(|l| PathBuf::from(l.trim()));
            match (lines.next(), lines.next()) {
                (Some(browser), Some(driver)) => (browser, driver),
                _ => panic!("tests/browser/install.sh printed no paths: {stdout}"),
            }
        })
    }

    /// Starts the WebDriver on `port`, in a process group of its own (so that dropping the
    /// browser ends the browser too), with its profiles under `profiles`.
    fn start_driver(self, port: u16, profiles: &Path) -> Child {
        let (_, driver) = self.binaries();
        let mut command = Command::new(driver);
        command
            .process_group(0)
            // The browser's scratch files too, which a killed browser leaves behind.
            .env("TMPDIR", profiles)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match self {
            Engine::Chromium => command.arg(format!("--port={port}")),
            // Firefox picks its own Marionette port; geckodriver makes the profile.
            Engine::Firefox => command
                .arg("--port")
                .arg(port.to_string())
                .arg("--profile-root")
                .arg(profiles),
        };
        command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()))
    }

    /// The capabilities of a new headless session.
    fn capabilities(self, profiles: &Path) -> Value {
        let (browser, _) = self.binaries();
        match self {
            Engine::Chromium => json!({
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": browser,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", format!("--window-size={WIDTH},{HEIGHT}"),
                        "--no-first-run", "--disable-extensions",
                        format!("--user-data-dir={}", profiles.display()),
                    ],
                },
            }),
            // The window is sized after the session starts (the W3C window rect).
            Engine::Firefox => json!({
                "browserName": "firefox",
                "moz:firefoxOptions": {
                    "binary": browser,
                    "args": ["-headless"],
                },
            }),
        }
    }
}

/// Where the browser tests write their screenshots: Chromium's at the top, Firefox's in
/// `firefox/`.
pub fn screenshot_dir(engine: Engine) -> PathBuf {
    let mut dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    if engine == Engine::Firefox {
        dir.push("firefox");
    }
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// A WebDriver process and one browser session; both end when dropped.
pub struct Browser {
    engine: Engine,
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    /// The browser's profile and scratch files, this session's alone; removed after the
    /// browser has ended.
    _profiles: tempfile::TempDir,
}

impl Browser {
    /// Starts the engine's WebDriver on a free loopback port and a headless session.
    pub async fn start(engine: Engine) -> Browser {
        let profiles = tempfile::tempdir().expect("profile dir");
        let http = reqwest::Client::new();
        // Another process may take the free port before the driver binds it: then the
        // driver exits, and it starts again on another.
        let mut attempts = 0;
        let (driver, base) = loop {
            attempts += 1;
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut driver = engine.start_driver(port, profiles.path());
            let base = format!("http://127.0.0.1:{port}");
            if wait_ready(&http, &base, &mut driver, engine).await {
                break (driver, base);
            }
            assert!(attempts < 3, "the {engine:?} WebDriver did not start");
        };
        let capabilities = engine.capabilities(profiles.path());
        let mut browser = Browser {
            engine,
            driver,
            base,
            session: String::new(),
            http,
            _profiles: profiles,
        };
        let answer = browser
            .post(
                "/session",
                json!({"capabilities": {"alwaysMatch": capabilities}}),
            )
            .await;
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {answer}"))
            .to_string();
        if engine == Engine::Firefox {
            browser
                .post(
                    "/session/window/rect",
                    json!({"width": WIDTH, "height": HEIGHT}),
                )
                .await;
        }
        browser
    }

    /// One WebDriver command; its value, or the error the WebDriver answered.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
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
        let mut answer: Value = r
            .send()
            .await
            .expect("the WebDriver answers")
            .json()
            .await
            .expect("the WebDriver answers JSON");
        let value = answer["value"].take();
        if value["error"].is_string() {
            Err(value)
        } else {
            Ok(value)
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
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
                .call(
                    reqwest::Method::POST,
                    "/session/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            match found {
                Ok(v) => {
                    return Element {
                        browser: self,
                        css: css.to_string(),
                        id: v[ELEMENT].as_str().expect("an element id").to_string(),
                    };
                }
                Err(e) if e["error"] == "no such element" => {}
                Err(e) => panic!("WebDriver find {css}: {e}"),
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
        loop {
            let answer = self
                .call(
                    reqwest::Method::POST,
                    "/session/alert/accept",
                    Some(json!({})),
                )
                .await;
            match answer {
                Ok(_) => return,
                Err(e) => assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "no dialog to accept: {e}"
                ),
            }
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
        let path = screenshot_dir(self.engine).join(format!("{name}.png"));
        std::fs::write(&path, png).expect("screenshot written");
        path
    }
}

/// Waits until the WebDriver at `base` is ready; false when it exited first.
async fn wait_ready(
    http: &reqwest::Client,
    base: &str,
    driver: &mut Child,
    engine: Engine,
) -> bool {
    let started = Instant::now();
    loop {
        let ready = http.get(format!("{base}/status")).send().await;
        if let Ok(r) = ready
            && let Ok(v) = r.json::<Value>().await
            && v["value"]["ready"] == true
        {
            return true;
        }
        if let Ok(Some(_)) = driver.try_wait() {
            return false;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the {engine:?} WebDriver did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The WebDriver and the browser it started: the process group this test created.
        let group = self.driver.id() as i32;
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is shared.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

/// An element of the page, found by a CSS selector.
pub struct Element<'a> {
    browser: &'a Browser,
    css: String,
    id: String,
}

impl Element<'_> {
    pub async fn click(&self) {
        self.act("click", json!({})).await;
    }

    /// Types `text` into the element (as keystrokes).
    pub async fn type_text(&self, text: &str) {
        self.act("value", json!({"text": text})).await;
    }

    /// Runs an element command. The page may have drawn the element again since it was
    /// found (the playground redraws its output on every run): the command then goes to
    /// what the selector finds now, for up to 15 s.
    async fn act(&self, command: &str, body: Value) {
        let started = Instant::now();
        let mut id = self.id.clone();
        loop {
            let path = format!("/session/element/{id}/{command}");
            match self
                .browser
                .call(reqwest::Method::POST, &path, Some(body.clone()))
                .await
            {
                Ok(_) => return,
                Err(e)
                    if e["error"] == "stale element reference"
                        && started.elapsed() < Duration::from_secs(15) =>
                {
                    id = self.browser.find(&self.css).await.id;
                }
                Err(e) => panic!("WebDriver {command} on {}: {e}", self.css),
            }
        }
    }
}
