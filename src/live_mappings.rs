//! The mapping set the running service uses, swapped atomically when the files change.
//!
//! A change in the mapping directory (file watch) or SIGHUP recompiles the whole set. On
//! success the new set replaces the old in one atomic swap: work already in flight keeps
//! the `Arc` it started with and finishes on the old set. On failure the last good set stays
//! in use, the errors are logged, shown on `/readyz`, and `mapping_reload_failing` is 1.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::mapping::{LoadErrors, MappingSet, OutputCheck};
use crate::metrics::{Metrics, OutcomeLabels};

/// The current mapping set and the state of its last reload.
pub struct LiveMappings {
    dir: PathBuf,
    /// How every set loaded from `dir` checks its outputs (`mappings.output_check`).
    check: OutputCheck,
    current: ArcSwap<MappingSet>,
    /// Set while the newest files fail to load (the older set is serving).
    failing: RwLock<Option<String>>,
    /// False when the service started without any good set (`on_broken_at_start = wait`).
    loaded: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl LiveMappings {
    /// Loads `dir`; any problem is an error (the service refuses to start).
    pub fn load(dir: &Path, metrics: Arc<Metrics>) -> Result<Arc<LiveMappings>, LoadErrors> {
        Self::load_checked(dir, OutputCheck::default(), metrics)
    }

    /// Loads `dir` with outputs checked as `check` says; any problem is an error.
    pub fn load_checked(
        dir: &Path,
        check: OutputCheck,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<LiveMappings>, LoadErrors> {
        let set = MappingSet::load_dir(dir)?.with_output_check(check);
        metrics.mapping_reloads.get_or_create(&outcome("ok")).inc();
        tracing::info!(version = set.version(), dir = %dir.display(), "mapping set loaded");
        Ok(Self::with(dir, check, set, true, None, metrics))
    }

    /// Loads `dir`, and when it is broken starts with an empty set that is not ready until a
    /// reload succeeds.
    pub fn load_or_wait(dir: &Path, metrics: Arc<Metrics>) -> Arc<LiveMappings> {
        Self::load_or_wait_checked(dir, OutputCheck::default(), metrics)
    }

    /// [`LiveMappings::load_or_wait`] with outputs checked as `check` says.
    pub fn load_or_wait_checked(
        dir: &Path,
        check: OutputCheck,
        metrics: Arc<Metrics>,
    ) -> Arc<LiveMappings> {
        match Self::load_checked(dir, check, metrics.clone()) {
            Ok(live) => live,
            Err(errors) => {
                tracing::error!(dir = %dir.display(), "mapping files do not load; waiting for a fix:\n{errors}");
                metrics
                    .mapping_reloads
                    .get_or_create(&outcome("error"))
                    .inc();
                metrics.mapping_reload_failing.set(1);
                let empty = MappingSet::from_texts(&[]).expect("an empty mapping set compiles");
                Self::with(dir, check, empty, false, Some(errors.to_string()), metrics)
            }
        }
    }

    fn with(
        dir: &Path,
        check: OutputCheck,
        set: MappingSet,
        loaded: bool,
        failing: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Arc<LiveMappings> {
        Arc::new(LiveMappings {
            dir: dir.to_path_buf(),
            check,
            current: ArcSwap::from_pointee(set),
            failing: RwLock::new(failing),
            loaded: std::sync::atomic::AtomicBool::new(loaded),
            metrics,
            changed: tokio::sync::watch::channel(0).0,
        })
    }

    /// The mapping directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The set to use for one piece of work (keep the `Arc` for its duration).
    pub fn current(&self) -> Arc<MappingSet> {
        self.current.load_full()
    }

    /// Whether a good set is loaded (false only while waiting after a broken start).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The errors of the newest files, while they fail to load.
    pub fn failing(&self) -> Option<String> {
        self.failing.read().expect("mapping state").clone()
    }

    /// Notified after every reload attempt (for health reporting).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Recompiles the directory; swaps on success, keeps the last good set on failure.
    pub fn reload(&self) -> Result<String, LoadErrors> {
        let result = MappingSet::load_dir(&self.dir).map(|s| s.with_output_check(self.check));
        let answer = match result {
            Ok(set) => {
                let version = set.version().to_string();
                let old = self.current.swap(Arc::new(set));
                self.loaded
                    .store(true, std::sync::atomic::Ordering::Release);
                *self.failing.write().expect("mapping state") = None;
                self.metrics
                    .mapping_reloads
                    .get_or_create(&outcome("ok"))
                    .inc();
                self.metrics.mapping_reload_failing.set(0);
                if old.version() != version {
                    tracing::info!(from = old.version(), to = %version, "mapping set reloaded");
                }
                Ok(version)
            }
            Err(errors) => {
                tracing::error!(
                    serving = self.current.load().version(),
                    "mapping files changed but do not load; keeping the last good set:\n{errors}"
                );
                *self.failing.write().expect("mapping state") = Some(errors.to_string());
                self.metrics
                    .mapping_reloads
                    .get_or_create(&outcome("error"))
                    .inc();
                self.metrics.mapping_reload_failing.set(1);
                Err(errors)
            }
        };
        self.changed.send_modify(|n| *n += 1);
        answer
    }

    /// Reloads on file changes (when `watch`) and on SIGHUP, until `shutdown`.
    pub fn spawn_reloaders(self: &Arc<Self>, watch: bool, shutdown: CancellationToken) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static str>(16);
        if watch {
            spawn_file_watch(&self.dir, tx.clone(), shutdown.clone());
        }
        #[cfg(unix)]
        {
            let tx = tx.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let Ok(mut hup) = signal(SignalKind::hangup()) else {
                    tracing::warn!("cannot listen for SIGHUP; mapping reloads need the file watch");
                    return;
                };
                loop {
                    tokio::select! {
                        _ = hup.recv() => { let _ = tx.send("SIGHUP").await; }
                        _ = stop.cancelled() => return,
                    }
                }
            });
        }
        drop(tx);
        let live = self.clone();
        tokio::spawn(async move {
            loop {
                let cause = tokio::select! {
                    c = rx.recv() => match c { Some(c) => c, None => return },
                    _ = shutdown.cancelled() => return,
                };
                // Editors write in several steps: let a burst of events settle first.
                tokio::time::sleep(Duration::from_millis(250)).await;
                while rx.try_recv().is_ok() {}
                tracing::info!(cause, "reloading mapping files");
                let live = live.clone();
                let _ = tokio::task::spawn_blocking(move || live.reload()).await;
            }
        });
    }
}

fn outcome(o: &str) -> OutcomeLabels {
    OutcomeLabels {
        outcome: o.to_string(),
    }
}

/// Watches `dir` (recursively: code tables live in sub-directories) and sends a reload
/// request per burst of changes.
fn spawn_file_watch(
    dir: &Path,
    tx: tokio::sync::mpsc::Sender<&'static str>,
    shutdown: CancellationToken,
) {
    use notify::{RecursiveMode, Watcher};
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && (e.kind.is_modify() || e.kind.is_create() || e.kind.is_remove())
        {
            let _ = tx.try_send("file change");
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the mapping directory; use SIGHUP to reload");
            return;
        }
    };
    if let Err(e) = watcher.watch(dir, RecursiveMode::Recursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the mapping directory; use SIGHUP to reload");
        return;
    }
    // The watcher lives until shutdown.
    tokio::spawn(async move {
        shutdown.cancelled().await;
        drop(watcher);
    });
}

/// Where the mapping files live and how changes are picked up.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MappingsSettings {
    /// Directory of `*.yaml` mapping files (relative to the working directory).
    pub dir: PathBuf,
    /// Reload when a file in `dir` changes (SIGHUP always reloads).
    pub watch: bool,
    /// What to do when the files do not load at start: `refuse` to start (default), or
    /// `wait` serving NOT_SERVING health until a reload succeeds.
    pub on_broken_at_start: BrokenAtStart,
    /// How every output is checked before it leaves: `basic` (structure, delimiters,
    /// escapes, required fields, lengths; FHIR elements, types, bindings and references) or
    /// `full` (also re-read by hl7-parser and deserialized by fhir-sdk; several times
    /// slower).
    pub output_check: OutputCheck,
    /// Values mapping files read as `config.<name>` (identifier systems, HL7 application
    /// names...). Names are case-sensitive.
    #[serde(default)]
    pub values: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokenAtStart {
    Refuse,
    Wait,
}

impl Default for MappingsSettings {
    fn default() -> Self {
        let mut values = serde_json::Map::new();
        for (name, value) in [
            ("placerIdentifierSystem", "urn:qubs:appointment"),
            ("patientIdentifierSystem", "urn:qubs:patient"),
            ("sendingApplication", "QUBS-BRIDGE"),
        ] {
            values.insert(name.into(), value.into());
        }
        MappingsSettings {
            dir: PathBuf::from("mappings"),
            watch: true,
            on_broken_at_start: BrokenAtStart::Refuse,
            output_check: OutputCheck::Basic,
            values,
        }
    }
}
