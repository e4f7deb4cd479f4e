//! PostgreSQL, for several replicas sharing one database (`store.url`).
//!
//! **Why tokio-postgres (with deadpool-postgres and tokio-postgres-rustls), not sqlx.** The
//! bridge needs a handful of hand-written statements, `LISTEN`/`NOTIFY` with control over
//! reconnection, and TLS through the rustls + aws-lc-rs stack it already builds for gRPC,
//! MLLP and QUBS. tokio-postgres gives exactly the wire protocol (prepared statements,
//! pipelining, notifications through `poll_message`) and nothing more; deadpool-postgres is
//! a small pool with statement caching per connection; tokio-postgres-rustls plugs in the
//! rustls config we build. sqlx would bring a query-macro layer, its own pool and
//! listener, and another rustls set-up, for a longer build on two cores and no statement
//! we could not write as well by hand. All three are MIT/Apache-2.0.
//!
//! **Connections.** A pool of `store.pool_size` connections for statements, and one more
//! that only listens for notifications ([`Signal`]), reconnecting with back-off; after each
//! (re)connection it tells subscribers to look again ([`Signal::Resync`]), since
//! notifications sent meanwhile are lost. (Connection poolers in transaction mode, such as
//! PgBouncer, break `LISTEN`: point the bridge at PostgreSQL or a session-mode pool.)
//!
//! **TLS** follows libpq's `sslmode` in the URL: `disable`; `prefer` (the default) and
//! `require` encrypt without checking the certificate unless a CA is given, then check it
//! as `verify-ca` does; `verify-ca` checks the chain against the CA file (`store.ca_file`
//! or `sslrootcert`); `verify-full` checks the chain and the host name. Use `verify-full`
//! beyond a trusted network.
//!
//! **Time** is the database's: `bridge_now_ms()` (Unix milliseconds of `clock_timestamp()`)
//! stamps rows and decides what is due and which leases ran out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures::StreamExt;
use tokio::sync::{broadcast, mpsc};
use tokio_postgres::AsyncMessage;
use tokio_postgres::types::ToSql;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_util::sync::CancellationToken;

use super::migrate::{Component, ComponentVersion, Migration};
use super::settings::{StoreSettings, expose, redact_url};
use super::{
    Backend, Grant, LeaseStatus, PoolUse, Replica, ReplicaStatus, Signal, StoreError, StoreMetrics,
};

/// Notifications about outbox results (`settled:<id>`, `due`).
pub const OUTBOX_CHANNEL: &str = "qubs_bridge_outbox";
/// Notifications about the order feed (`event:<id>`, `queued`).
pub const FEED_CHANNEL: &str = "qubs_bridge_feed";

/// Advisory lock keys (`pg_advisory_xact_lock`); "QUBS" in the high half.
pub(crate) const MIGRATION_LOCK: i64 = 0x5155_4253_0000_0001;
pub(crate) const FEED_EVENTS_LOCK: i64 = 0x5155_4253_0000_0002;
pub(crate) const CONSOLE_HISTORY_LOCK: i64 = 0x5155_4253_0000_0003;

/// The store's own tables: replicas and leases, and the database clock.
pub static SCHEMA: Component = Component {
    name: "store",
    copy: &[],
    sqlite: &[],
    postgres: &[Migration {
        version: 1,
        description: "replicas, leases, the database clock",
        sql: "
CREATE FUNCTION bridge_now_ms() RETURNS bigint LANGUAGE sql VOLATILE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;
CREATE TABLE bridge_replicas (
    id            TEXT    PRIMARY KEY,
    host          TEXT    NOT NULL,
    pid           INTEGER NOT NULL,
    version       TEXT    NOT NULL,
    started_at    BIGINT  NOT NULL,
    heartbeat_at  BIGINT  NOT NULL,
    stopped_at    BIGINT
);
CREATE TABLE bridge_leases (
    role          TEXT    NOT NULL,
    scope         TEXT    NOT NULL,
    holder        TEXT    NOT NULL,
    acquired_at   BIGINT  NOT NULL,
    renewed_at    BIGINT  NOT NULL,
    lease_until   BIGINT  NOT NULL,
    released      BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (role, scope)
);
",
    }],
};

/// A connection to PostgreSQL shared by the outbox and the feed.
pub struct Postgres {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    location: String,
    replica: Replica,
    signals: broadcast::Sender<Signal>,
    pub(crate) metrics: Arc<StoreMetrics>,
    lease: Duration,
    /// Ends the notification listener when the store goes away.
    stop: CancellationToken,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How the URL asks for TLS (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A URL split into what tokio-postgres reads and what the bridge handles itself.
#[derive(Debug)]
pub(crate) struct ParsedUrl {
    config: tokio_postgres::Config,
    ssl: SslMode,
    root_cert: Option<PathBuf>,
}

/// Reads a `postgres://` URL; `sslmode` (libpq's five values) and `sslrootcert` are taken
/// out, the rest goes to tokio-postgres. Errors never quote the password.
pub(crate) fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut ssl = SslMode::Prefer;
    let mut root_cert = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = percent_encoding::percent_decode_str(value)
            .decode_utf8_lossy()
            .into_owned();
        match key {
            "sslmode" => {
                ssl = match decoded.as_str() {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
                        ));
                    }
                }
            }
            "sslrootcert" => root_cert = Some(PathBuf::from(decoded)),
            _ => rest.push(pair),
        }
    }
    let text = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    let config: tokio_postgres::Config = text
        .parse()
        .map_err(|e| format!("`{}`: {e}", redact_url(url)))?;
    Ok(ParsedUrl {
        config,
        ssl,
        root_cert,
    })
}

impl Postgres {
    /// Connects (one connection at once, so that a wrong address, password or certificate
    /// stops start-up with a clear message) and returns the store.
    pub async fn connect(
        settings: &StoreSettings,
        metrics: Arc<StoreMetrics>,
    ) -> Result<Arc<Postgres>, StoreError> {
        let url = settings.url.as_deref().unwrap_or_default();
        let location = redact_url(url);
        let open_error = |reason: String| StoreError::Open {
            path: location.clone(),
            reason,
        };
        let parsed = parse_url(url).map_err(open_error)?;
        let mut config = parsed.config;
        if let Some(password) = settings
            .password()
            .map_err(|e| open_error(format!("store.{}", e)))?
        {
            config.password(expose(&password));
        }
        if config.get_application_name().is_none() {
            config.application_name("qubs-bridge");
        }
        config.connect_timeout(settings.connect_timeout());
        // A partitioned database shows as a dead connection within a lease, not after the
        // operating system's two hours.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(3));
        config.keepalives_retries(3);
        config.tcp_user_timeout(settings.lease());
        config.ssl_mode(match parsed.ssl {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let ca_file = settings.ca_file.as_deref().or(parsed.root_cert.as_deref());
        let tls = MakeRustlsConnect::new(tls_config(parsed.ssl, ca_file).map_err(open_error)?);
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let timeout = Some(settings.connect_timeout());
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .recycle_timeout(timeout)
            .build()
            .map_err(|e| open_error(e.to_string()))?;
        let pg = Arc::new(Postgres {
            pool,
            config,
            tls,
            location: location.clone(),
            replica: Replica::this_process(),
            signals: broadcast::channel(1024).0,
            metrics,
            lease: settings.lease(),
            stop: CancellationToken::new(),
        });
        // A wrong address, password or certificate shows now, with its reason.
        drop(pg.client("connect").await?);
        Ok(pg)
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }

    pub fn pool_use(&self) -> PoolUse {
        let s = self.pool.status();
        PoolUse {
            size: s.size,
            max: s.max_size,
            idle: s.available,
            waiting: s.waiting,
        }
    }

    /// A pooled connection; `operation` names it in the error metric.
    pub(crate) async fn client(&self, operation: &'static str) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            self.metrics.error(operation);
            StoreError::Unavailable(format!("{}: {}", self.location, with_causes(&e)))
        })
    }

    /// A failed statement as a store error, counted under `operation`.
    pub(crate) fn failed(&self, operation: &'static str, e: tokio_postgres::Error) -> StoreError {
        self.metrics.error(operation);
        if e.as_db_error().is_some() {
            StoreError::Storage(with_causes(&e))
        } else {
            StoreError::Unavailable(format!("{}: {}", self.location, with_causes(&e)))
        }
    }

    /// Fails unless this replica holds the lease on `role`/`scope` (by the database clock),
    /// and keeps the lease row locked until the transaction ends, so another replica cannot
    /// take it over before this transaction's writes are committed.
    pub(crate) async fn fence(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        role: &str,
        scope: &str,
    ) -> Result<(), StoreError> {
        let held = tx
            .query_opt(
                "SELECT 1 FROM bridge_leases WHERE role = $1 AND scope = $2 AND holder = $3
                   AND lease_until > bridge_now_ms() FOR SHARE",
                &[&role, &scope, &self.replica.id],
            )
            .await
            .map_err(|e| self.failed("fence", e))?;
        match held {
            Some(_) => Ok(()),
            None => Err(StoreError::NotLeader {
                role: role.into(),
                scope: scope.into(),
            }),
        }
    }

    /// Creates or upgrades every component's tables in one transaction, under an advisory
    /// lock: replicas running it at the same time take turns, and the later ones find
    /// nothing left to do.
    pub async fn migrate(
        &self,
        components: &[&'static Component],
    ) -> Result<Vec<(ComponentVersion, u32)>, StoreError> {
        let mut client = self.client("migrate").await?;
        let fail = |e| self.failed("migrate", e);
        let tx = client.transaction().await.map_err(fail)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(fail)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS bridge_schema (
                 component  TEXT    PRIMARY KEY,
                 version    INTEGER NOT NULL,
                 updated_at BIGINT  NOT NULL
             )",
        )
        .await
        .map_err(fail)?;
        let mut done = Vec::new();
        for component in components {
            let stored: u32 = tx
                .query_opt(
                    "SELECT version FROM bridge_schema WHERE component = $1",
                    &[&component.name],
                )
                .await
                .map_err(fail)?
                .map_or(0, |r| r.get::<_, i32>(0) as u32);
            let known = component.latest(Backend::Postgres);
            let version = ComponentVersion {
                name: component.name,
                stored,
                known,
            };
            if stored > known {
                return Err(StoreError::Schema(format!(
                    "the database schema was written by a newer qubs-bridge ({} {stored}; this one knows {known}); nothing was changed",
                    component.name
                )));
            }
            for m in component.postgres.iter().filter(|m| m.version > stored) {
                tx.batch_execute(m.sql).await.map_err(|e| {
                    StoreError::Storage(format!(
                        "{} migration {} ({}): {e}",
                        component.name, m.version, m.description
                    ))
                })?;
            }
            if known > stored {
                tx.execute(
                    "INSERT INTO bridge_schema (component, version, updated_at)
                     VALUES ($1, $2, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                     ON CONFLICT (component) DO UPDATE SET version = excluded.version,
                         updated_at = excluded.updated_at",
                    &[&component.name, &(known as i32)],
                )
                .await
                .map_err(fail)?;
            }
            done.push((version, known));
        }
        tx.commit().await.map_err(fail)?;
        Ok(done)
    }

    /// Each component's recorded and known version (0 recorded when the database has no
    /// bridge schema at all).
    pub async fn schema_versions(
        &self,
        components: &[&'static Component],
    ) -> Result<Vec<ComponentVersion>, StoreError> {
        let client = self.client("schema").await?;
        let fail = |e| self.failed("schema", e);
        let exists: bool = client
            .query_one("SELECT to_regclass('bridge_schema') IS NOT NULL", &[])
            .await
            .map_err(fail)?
            .get(0);
        let mut out = Vec::new();
        for component in components {
            let stored = if exists {
                client
                    .query_opt(
                        "SELECT version FROM bridge_schema WHERE component = $1",
                        &[&component.name],
                    )
                    .await
                    .map_err(fail)?
                    .map_or(0, |r| r.get::<_, i32>(0) as u32)
            } else {
                0
            };
            out.push(ComponentVersion {
                name: component.name,
                stored,
                known: component.latest(Backend::Postgres),
            });
        }
        Ok(out)
    }

    /// Takes the lease if it is free, ran out, or is already this replica's; renews it then.
    pub async fn acquire_lease(
        &self,
        role: &str,
        scope: &str,
        lease: Duration,
    ) -> Result<Grant, StoreError> {
        let client = self.client("lease").await?;
        let row = client
            .query_opt(
                "WITH prior AS (SELECT holder, released FROM bridge_leases
                                WHERE role = $1 AND scope = $2),
                      t AS (SELECT bridge_now_ms() AS now)
                 INSERT INTO bridge_leases AS l (role, scope, holder, acquired_at, renewed_at, lease_until)
                 SELECT $1, $2, $3, t.now, t.now, t.now + $4 FROM t
                 ON CONFLICT (role, scope) DO UPDATE
                     SET holder = excluded.holder, renewed_at = excluded.renewed_at,
                         lease_until = excluded.lease_until, released = false,
                         acquired_at = CASE WHEN l.holder = excluded.holder
                                            THEN l.acquired_at ELSE excluded.acquired_at END
                     WHERE l.holder = excluded.holder OR l.lease_until <= excluded.renewed_at
                 RETURNING (SELECT holder FROM prior WHERE NOT released)",
                &[&role, &scope, &self.replica.id, &(lease.as_millis() as i64)],
            )
            .await
            .map_err(|e| self.failed("lease", e))?;
        Ok(match row {
            None => Grant {
                held: false,
                takeover: false,
            },
            Some(row) => {
                let prior: Option<String> = row.get(0);
                Grant {
                    held: true,
                    takeover: prior.is_some_and(|p| p != self.replica.id),
                }
            }
        })
    }

    /// Ends this replica's lease now.
    pub async fn release_lease(&self, role: &str, scope: &str) -> Result<(), StoreError> {
        let client = self.client("lease").await?;
        client
            .execute(
                "UPDATE bridge_leases SET lease_until = bridge_now_ms(), released = true
                 WHERE role = $1 AND scope = $2 AND holder = $3",
                &[&role, &scope, &self.replica.id],
            )
            .await
            .map_err(|e| self.failed("lease", e))?;
        Ok(())
    }

    /// Records that this replica is alive (and that the database answers).
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        let client = self.client("heartbeat").await?;
        let r = &self.replica;
        client
            .execute(
                "INSERT INTO bridge_replicas (id, host, pid, version, started_at, heartbeat_at)
                 VALUES ($1, $2, $3, $4, bridge_now_ms(), bridge_now_ms())
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                     stopped_at = NULL",
                &[&r.id, &r.host, &(r.pid as i32), &r.version],
            )
            .await
            .map_err(|e| self.failed("heartbeat", e))?;
        Ok(())
    }

    pub async fn stopped(&self) {
        if let Ok(client) = self.client("heartbeat").await {
            let _ = client
                .execute(
                    "UPDATE bridge_replicas SET stopped_at = bridge_now_ms() WHERE id = $1",
                    &[&self.replica.id],
                )
                .await;
        }
    }

    /// Replicas, leases and the database clock.
    pub async fn cluster(&self) -> Result<(Vec<ReplicaStatus>, Vec<LeaseStatus>, i64), StoreError> {
        let client = self.client("status").await?;
        let fail = |e| self.failed("status", e);
        let exists: bool = client
            .query_one("SELECT to_regclass('bridge_leases') IS NOT NULL", &[])
            .await
            .map_err(fail)?
            .get(0);
        if !exists {
            let now: f64 = client
                .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
                .await
                .map_err(fail)?
                .get(0);
            return Ok((Vec::new(), Vec::new(), (now * 1000.0) as i64));
        }
        let replicas = client
            .query(
                "SELECT id, host, pid, version, started_at, heartbeat_at, stopped_at
                 FROM bridge_replicas ORDER BY started_at, id",
                &[],
            )
            .await
            .map_err(fail)?
            .iter()
            .map(|r| ReplicaStatus {
                id: r.get(0),
                host: r.get(1),
                pid: r.get::<_, i32>(2) as u32,
                version: r.get(3),
                started_at_ms: r.get(4),
                heartbeat_at_ms: r.get(5),
                stopped_at_ms: r.get(6),
            })
            .collect();
        let leases = client
            .query(
                "SELECT role, scope, holder, acquired_at, lease_until FROM bridge_leases
                 ORDER BY role, scope",
                &[],
            )
            .await
            .map_err(fail)?
            .iter()
            .map(|r| LeaseStatus {
                role: r.get(0),
                scope: r.get(1),
                holder: r.get(2),
                acquired_at_ms: r.get(3),
                lease_until_ms: r.get(4),
            })
            .collect();
        let now: i64 = client
            .query_one("SELECT bridge_now_ms()", &[])
            .await
            .map_err(fail)?
            .get(0);
        Ok((replicas, leases, now))
    }

    /// Forgets replicas that stopped or went silent more than `older_than` ago.
    pub async fn prune_replicas(&self, older_than: Duration) -> Result<u64, StoreError> {
        let client = self.client("retention").await?;
        client
            .execute(
                "DELETE FROM bridge_replicas WHERE heartbeat_at < bridge_now_ms() - $1",
                &[&(older_than.as_millis() as i64)],
            )
            .await
            .map_err(|e| self.failed("retention", e))
    }

    /// Starts the notification listener (the service calls this once).
    pub fn start_listening(self: &Arc<Self>) {
        let config = self.config.clone();
        let tls = self.tls.clone();
        let signals = self.signals.clone();
        let stop = self.stop.clone();
        let metrics = self.metrics.clone();
        let location = self.location.clone();
        tokio::spawn(async move {
            let mut backoff =
                crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                match config.connect(tls.clone()).await {
                    Ok((client, mut connection)) => {
                        let (tx, mut rx) = mpsc::unbounded_channel();
                        let driver = tokio::spawn(async move {
                            let mut messages =
                                futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                            while let Some(Ok(message)) = messages.next().await {
                                if let AsyncMessage::Notification(n) = message
                                    && tx.send(n).is_err()
                                {
                                    return;
                                }
                            }
                        });
                        let listening = client
                            .batch_execute(&format!(
                                "LISTEN {OUTBOX_CHANNEL}; LISTEN {FEED_CHANNEL}"
                            ))
                            .await;
                        if listening.is_ok() {
                            backoff.reset();
                            let _ = signals.send(Signal::Resync);
                            loop {
                                tokio::select! {
                                    n = rx.recv() => match n {
                                        Some(n) => {
                                            let _ = signals.send(Signal::Notification {
                                                channel: n.channel().to_string(),
                                                payload: n.payload().to_string(),
                                            });
                                        }
                                        None => break,
                                    },
                                    _ = stop.cancelled() => {
                                        driver.abort();
                                        return;
                                    }
                                }
                            }
                        }
                        driver.abort();
                        metrics.error("listen");
                        tracing::warn!(database = %location, "the notification connection was lost; reconnecting");
                    }
                    Err(e) => {
                        metrics.error("listen");
                        tracing::warn!(database = %location, error = %e, "cannot open the notification connection; retrying");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.cancelled() => return,
                }
            }
        });
    }
}

/// An error and its causes, each said once ("error performing TLS handshake: invalid peer
/// certificate: UnknownIssuer").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

/// The rustls configuration `mode` asks for.
fn tls_config(mode: SslMode, ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let roots = match ca_file {
        None => None,
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let err = |e: &dyn std::fmt::Display| format!("store CA file {}: {e}", path.display());
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(&e))? {
                roots.add(cert.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
            }
            if roots.is_empty() {
                return Err(err(&"no certificate in it"));
            }
            Some(Arc::new(roots))
        }
    };
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match (mode, roots) {
        (SslMode::VerifyFull, Some(roots)) => {
            return Ok(builder.with_root_certificates(roots).with_no_client_auth());
        }
        (SslMode::VerifyFull | SslMode::VerifyCa, None) => {
            return Err(
                "sslmode=verify-ca and verify-full need the CA that signed the server's certificate: set store.ca_file (or sslrootcert in the URL)".into(),
            );
        }
        (_, Some(roots)) => Arc::new(ChainOnly(
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| e.to_string())?,
        )),
        (_, None) => Arc::new(Unverified(provider)),
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `verify-ca`: the chain must lead to the CA; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a CA (libpq's behaviour): encrypted, the certificate not
/// checked. The handshake signatures still are.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Runs `sql`, a statement that takes the head of a queue table (`outbox_results`,
/// `feed_deliveries`) in id order, in a transaction of its own.
///
/// A queue's statistics lag its contents: a backlog that built up since the last ANALYZE
/// (a fresh table, or one whose last ANALYZE saw it nearly empty) is estimated at a
/// handful of pending rows. The planner then reads every pending row, checks each one's
/// turn and sorts them all to return the first few: measured at 80–110 ms per call with
/// 10–12k pending, against under 1 ms for walking the pending index in id order and
/// stopping at the limit. With sorts and bitmap scans off for this one statement, that
/// walk is the plan left, whatever the statistics say.
pub(crate) async fn query_queue_head(
    client: &mut Object,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let statement = tx.prepare_cached(sql).await?;
    let (_, rows) = futures::try_join!(
        tx.batch_execute("SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off"),
        tx.query(&statement, params),
    )?;
    tx.commit().await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_libpq_ssl_modes_and_never_quote_the_password() {
        let p = parse_url("postgres://b:pw@db.example:6432/qubs?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x").unwrap();
        assert_eq!(p.ssl, SslMode::VerifyFull);
        assert_eq!(p.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(p.config.get_dbname(), Some("qubs"));
        assert_eq!(p.config.get_ports(), &[6432]);
        assert_eq!(parse_url("postgres://db/q").unwrap().ssl, SslMode::Prefer);
        let e = parse_url("postgres://b:secretpw@db/q?bogus_option=1").unwrap_err();
        assert!(!e.contains("secretpw"), "{e}");
        let e = parse_url("postgres://db/q?sslmode=maybe").unwrap_err();
        assert!(e.contains("sslmode"), "{e}");
    }

    #[test]
    fn verify_modes_need_a_ca() {
        let e = tls_config(SslMode::VerifyFull, None).unwrap_err();
        assert!(e.contains("store.ca_file"), "{e}");
        assert!(tls_config(SslMode::Require, None).is_ok());
        let e = tls_config(SslMode::VerifyCa, Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
