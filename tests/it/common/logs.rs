//! Captured logs, for tests that search them for what must never be logged.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// A log sink that keeps everything written to it.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// A plain-text subscriber writing here, with `filter` (env-filter directives).
    pub fn subscriber(&self, filter: &str) -> impl tracing::Subscriber + Send + Sync + 'static {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish()
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// The process-wide capture, held by one test at a time (see [`exclusive`]).
pub struct Exclusive {
    pub capture: Capture,
    _turn: std::sync::MutexGuard<'static, ()>,
}

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Installs (once) a process-wide subscriber writing to one capture, waits for this test's
/// turn, then empties the capture and sets `filter` (env-filter directives). The bridge logs
/// from its own threads (the store writer, blocking tasks), which a thread-local subscriber
/// would miss; a global one is shared, so tests using it take turns.
pub fn exclusive(filter: &str) -> Exclusive {
    use std::sync::OnceLock;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    static GLOBAL: OnceLock<(Capture, FilterHandle)> = OnceLock::new();
    static TURN: Mutex<()> = Mutex::new(());

    let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (capture, handle) = GLOBAL.get_or_init(|| {
        let capture = Capture::default();
        let writer = capture.clone();
        let (filter, handle) =
            tracing_subscriber::reload::Layer::new(tracing_subscriber::EnvFilter::new("off"));
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(move || writer.clone())
                    .with_ansi(false),
            )
            .init();
        (capture, handle)
    });
    handle
        .reload(tracing_subscriber::EnvFilter::new(filter))
        .expect("the capture's filter reloads");
    capture.0.lock().unwrap().clear();
    Exclusive {
        capture: capture.clone(),
        _turn: turn,
    }
}
