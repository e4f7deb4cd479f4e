//! The store: everything the bridge must not forget across a restart, a `kill -9` or the
//! loss of a machine — the results [`crate::outbox`] and the order [`crate::feed`]'s watch
//! state and delivery queues.
//!
//! **Two backends, one seam.** The outbox and the feed each talk to their own storage
//! interface ([`crate::outbox::OutboxStore`], [`crate::feed::FeedStore`]: domain types in,
//! domain types out), with one implementation per backend in their own `sqlite.rs` and
//! `postgres.rs`. A [`Database`] is the connection those implementations share:
//!
//! - [`sqlite`]: the embedded default, one file at `store.path` with one writer thread and
//!   group commit. Nothing to install; one process.
//! - [`postgres`]: `store.url` set to a `postgres://` URL. Several replicas of the bridge
//!   share one database: work is claimed (`FOR UPDATE SKIP LOCKED` with a lease), and what
//!   must happen once per cluster (polling a domain, draining a destination, pruning) has
//!   one leader chosen in the database ([`leader`]).
//!
//! **Schemas.** Each component owns its tables and their versioned [`migrate::Migration`]s,
//! one list per backend, described by a [`migrate::Component`]; this module owns only its
//! own (replicas, leases) and the runner. SQLite files are migrated when opened (one process
//! owns the file); a PostgreSQL database is migrated by `qubs-bridge store migrate`, and
//! `serve` refuses a schema older or newer than it knows.
//!
//! **Time.** Due times, leases and retry times are the store's: the database clock on
//! PostgreSQL (replicas' clocks may disagree), the machine's on SQLite. Callers hand the
//! store delays, never absolute times.

mod copy;
pub mod leader;
pub mod metrics;
pub mod migrate;
pub mod postgres;
mod settings;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

pub use copy::{CopyProgress, CopySummary, copy_sqlite_to_postgres};
pub use metrics::StoreMetrics;
pub use migrate::{Component, ComponentVersion, Migration};
pub use settings::{StoreSettings, redact_url};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database {path}: {reason}")]
    Open { path: String, reason: String },
    #[error(
        "the claim on outbox result {0} ran out and another replica took the result over; its outcome is recorded there"
    )]
    ClaimLost(i64),
    #[error("store storage failed: {0}")]
    Storage(String),
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Schema(String),
    #[error("this replica no longer leads `{role}` for `{scope}`; the write was refused")]
    NotLeader { role: String, scope: String },
    #[error("the store is closed")]
    Closed,
}

/// Unix milliseconds on this machine's clock: the SQLite store's time, and ages shown to
/// operators. Due times and leases on PostgreSQL use the database's clock instead.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Which backend a [`Database`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        }
    }
}

/// This process, as the other replicas and operators see it.
#[derive(Debug, Clone)]
pub struct Replica {
    /// Unique per process start.
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub version: &'static str,
}

impl Replica {
    /// A fresh identity for this process.
    pub fn this_process() -> Replica {
        let host = hostname();
        let pid = std::process::id();
        let short = uuid::Uuid::new_v4().simple().to_string();
        Replica {
            id: format!("{host}-{pid}-{}", &short[..8]),
            host,
            pid,
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length, which is what we pass; gethostname
    // writes at most that many bytes.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(h) if ok && !h.is_empty() => h.to_string(),
        _ => "localhost".into(),
    }
}

/// A change another replica (or this one) made, heard through the database: only a reason
/// to look again, never the state itself (notifications can be lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A notification on one of the bridge's channels.
    Notification { channel: String, payload: String },
    /// The notification connection was (re)established: anything may have been missed.
    Resync,
}

/// Whether a lease was granted, and whether it was taken from another holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub held: bool,
    /// Taken over from another replica whose lease had run out.
    pub takeover: bool,
}

/// One replica the database has heard from.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub version: String,
    pub started_at_ms: i64,
    pub heartbeat_at_ms: i64,
    /// Set when it stopped cleanly.
    pub stopped_at_ms: Option<i64>,
}

/// Who leads one role.
#[derive(Debug, Clone)]
pub struct LeaseStatus {
    pub role: String,
    pub scope: String,
    pub holder: String,
    pub acquired_at_ms: i64,
    pub lease_until_ms: i64,
}

/// What `store check` shows.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub backend: Backend,
    /// The file, or the URL without its password.
    pub location: String,
    pub schema: Vec<ComponentVersion>,
    pub replicas: Vec<ReplicaStatus>,
    pub leases: Vec<LeaseStatus>,
    /// The store's clock when this was read.
    pub now_ms: i64,
}

/// The store's connection, shared by the outbox and the feed; cheap to clone.
#[derive(Clone)]
pub enum Database {
    Sqlite(Arc<sqlite::Store>),
    Postgres(Arc<postgres::Postgres>),
}

impl Database {
    /// Opens the store the settings name, for the service: SQLite is created or migrated;
    /// PostgreSQL must already carry exactly the schema `components` describe (see
    /// `qubs-bridge store migrate`), and this process joins its replicas.
    pub async fn open(
        settings: &StoreSettings,
        components: &[&'static Component],
        metrics: Arc<StoreMetrics>,
    ) -> Result<Database, StoreError> {
        match settings.url.as_deref() {
            None => Ok(Database::Sqlite(sqlite::Store::open(
                &settings.path,
                components,
            )?)),
            Some(_) => {
                let pg = postgres::Postgres::connect(settings, metrics).await?;
                let versions = pg.schema_versions(components).await?;
                migrate::require_current(&versions)?;
                pg.start_listening();
                Ok(Database::Postgres(pg))
            }
        }
    }

    /// Opens the store for the `store` tools: no schema check, no listening.
    pub async fn open_for_tools(
        settings: &StoreSettings,
        components: &[&'static Component],
    ) -> Result<Database, StoreError> {
        match settings.url.as_deref() {
            None => Ok(Database::Sqlite(sqlite::Store::open(
                &settings.path,
                components,
            )?)),
            Some(_) => Ok(Database::Postgres(
                postgres::Postgres::connect(settings, Arc::new(StoreMetrics::default())).await?,
            )),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Database::Sqlite(_) => Backend::Sqlite,
            Database::Postgres(_) => Backend::Postgres,
        }
    }

    /// The file, or the URL without its password.
    pub fn location(&self) -> String {
        match self {
            Database::Sqlite(s) => s.path().display().to_string(),
            Database::Postgres(p) => p.location().to_string(),
        }
    }

    /// Creates or upgrades every component's tables; answers what each was and is now.
    /// Safe to run from several replicas at once.
    pub async fn migrate(
        &self,
        components: &[&'static Component],
    ) -> Result<Vec<(ComponentVersion, u32)>, StoreError> {
        match self {
            Database::Sqlite(s) => {
                let versions = s.schema_versions(components).await?;
                // Opening migrated it already.
                Ok(versions.into_iter().map(|v| (v.clone(), v.known)).collect())
            }
            Database::Postgres(p) => p.migrate(components).await,
        }
    }

    /// Each component's stored and known schema versions.
    pub async fn schema_versions(
        &self,
        components: &[&'static Component],
    ) -> Result<Vec<ComponentVersion>, StoreError> {
        match self {
            Database::Sqlite(s) => s.schema_versions(components).await,
            Database::Postgres(p) => p.schema_versions(components).await,
        }
    }

    /// Backend, schema, replicas and leaders, for `store check`.
    pub async fn status(
        &self,
        components: &[&'static Component],
    ) -> Result<ClusterStatus, StoreError> {
        let schema = self.schema_versions(components).await?;
        let (replicas, leases, now) = match self {
            Database::Sqlite(_) => (Vec::new(), Vec::new(), now_ms()),
            Database::Postgres(p) => p.cluster().await?,
        };
        Ok(ClusterStatus {
            backend: self.backend(),
            location: self.location(),
            schema,
            replicas,
            leases,
            now_ms: now,
        })
    }

    /// Takes or renews the lease on `role` for `scope` for `lease`. The embedded store has
    /// one process: it always leads.
    pub async fn acquire_lease(
        &self,
        role: &str,
        scope: &str,
        lease: Duration,
    ) -> Result<Grant, StoreError> {
        match self {
            Database::Sqlite(_) => Ok(Grant {
                held: true,
                takeover: false,
            }),
            Database::Postgres(p) => p.acquire_lease(role, scope, lease).await,
        }
    }

    /// Gives a lease up at once, so that another replica need not wait for it to run out.
    pub async fn release_lease(&self, role: &str, scope: &str) -> Result<(), StoreError> {
        match self {
            Database::Sqlite(_) => Ok(()),
            Database::Postgres(p) => p.release_lease(role, scope).await,
        }
    }

    /// Tells the other replicas this one is alive, and checks that the database answers.
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        match self {
            Database::Sqlite(s) => {
                s.read(|tx, _| tx.query_row("SELECT 1", [], |_| Ok(())))
                    .await
            }
            Database::Postgres(p) => p.heartbeat().await,
        }
    }

    /// Notes a clean stop, so that `store check` does not show this replica as lost.
    pub async fn stopped(&self) {
        if let Database::Postgres(p) = self {
            p.stopped().await;
        }
    }

    /// Changes heard from the database (PostgreSQL); never yields on SQLite, where every
    /// change is made in this process.
    pub fn subscribe(&self) -> broadcast::Receiver<Signal> {
        match self {
            Database::Sqlite(s) => s.signals(),
            Database::Postgres(p) => p.subscribe(),
        }
    }

    /// How long leases last (PostgreSQL; the embedded store has no leases).
    pub fn lease(&self) -> Duration {
        match self {
            Database::Sqlite(_) => Duration::from_secs(StoreSettings::default().lease_secs),
            Database::Postgres(p) => p.lease(),
        }
    }

    /// This process's identity.
    pub fn replica(&self) -> &Replica {
        match self {
            Database::Sqlite(s) => s.replica(),
            Database::Postgres(p) => p.replica(),
        }
    }

    /// Connections in use and idle, and callers waiting for one (PostgreSQL).
    pub fn pool_use(&self) -> Option<PoolUse> {
        match self {
            Database::Sqlite(_) => None,
            Database::Postgres(p) => Some(p.pool_use()),
        }
    }
}

/// The connection pool's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUse {
    pub size: usize,
    pub max: usize,
    pub idle: usize,
    pub waiting: usize,
}
