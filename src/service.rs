//! The long-running service: wires the QUBS client to the gRPC API and the admin endpoint,
//! and keeps watch on QUBS and on the store. Started by `qubs-bridge serve`.
//!
//! With the store on PostgreSQL several replicas run side by side: each takes results and
//! serves the API, claims outbox work, and competes for the roles only one may hold at a
//! time (polling each domain, draining each destination, retention;
//! [`crate::store::leader`]).

use std::net::SocketAddr;
use std::time::Duration;

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::admin::{self, DomainHealth, Readiness, StoreHealth};
use crate::config::{BrokenAtStart, Settings};
use crate::feed::Feed;
use crate::live_mappings::LiveMappings;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::pending_list::{PendingList, PendingStore};
use crate::results::Results;
use crate::store::leader::{self, Role};
use crate::store::migrate::Component;
use crate::store::{Database, StoreError};
use crate::{grpc, qubs};

/// Every component's tables: what `store migrate` creates and `serve` expects.
pub static SCHEMA: [&Component; 5] = [
    &crate::store::postgres::SCHEMA,
    &crate::outbox::SCHEMA,
    &crate::feed::SCHEMA,
    &crate::pending_list::SCHEMA,
    &crate::console::store::SCHEMA,
];

/// Replicas silent this long are dropped from `store check`.
const FORGET_REPLICAS_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// Listen addresses of the service's own endpoints.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Admin HTTP endpoint: `/healthz`, `/readyz`.
    pub admin_listen: String,
    /// gRPC endpoint for interface engines.
    pub grpc_listen: String,
    /// How long in-flight work may take to finish after SIGINT/SIGTERM.
    pub shutdown_grace_secs: u64,
    /// How often the service re-checks that QUBS answers for every domain.
    pub qubs_probe_interval_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            admin_listen: "127.0.0.1:9090".into(),
            grpc_listen: "127.0.0.1:50051".into(),
            shutdown_grace_secs: 30,
            qubs_probe_interval_secs: 60,
        }
    }
}

/// A started service; [`RunningService::wait`] returns once it has shut down.
pub struct RunningService {
    pub admin_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// The MLLP listener, when enabled.
    pub mllp_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    /// The store this replica uses.
    pub db: Database,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    grace: Duration,
    shutdown: CancellationToken,
}

/// Starts the admin endpoint and the QUBS checks; everything stops when `shutdown` is
/// cancelled.
pub async fn start(
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningService> {
    let stop_token = shutdown.clone();
    let metrics = Arc::new(Metrics::new());
    let observer: Arc<dyn qubs::CallObserver> = metrics.clone();
    let client = qubs::Client::with_observer(&settings.qubs, Some(observer))?;
    let readiness = Readiness::default();
    let admin_listen: SocketAddr = settings.server.admin_listen.parse()?;
    let console_mount = settings
        .console
        .enabled
        .then(crate::console::Mount::default);
    let (admin_addr, admin_task) = admin::serve(
        admin_listen,
        readiness.clone(),
        settings.qubs.domains.clone(),
        metrics.clone(),
        console_mount.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot listen on server.admin_listen {admin_listen}: {e}"))?;
    tracing::info!(%admin_addr, "admin endpoint listening (/healthz, /readyz, /metrics)");

    let mappings = match settings.mappings.on_broken_at_start {
        BrokenAtStart::Refuse => LiveMappings::load_checked(
            &settings.mappings.dir,
            settings.mappings.output_check,
            metrics.clone(),
        )
            .map_err(|errors| {
                anyhow::anyhow!(
                    "the mapping files in {} do not load; fix them (qubs-bridge mappings check) and start again:\n{errors}",
                    settings.mappings.dir.display()
                )
            })?,
        BrokenAtStart::Wait => LiveMappings::load_or_wait_checked(
            &settings.mappings.dir,
            settings.mappings.output_check,
            metrics.clone(),
        ),
    };
    mappings.spawn_reloaders(settings.mappings.watch, shutdown.clone());
    let db = Database::open(&settings.store, &SCHEMA, metrics.store.clone()).await?;
    let pending = Arc::new(PendingList::new(
        client.clone(),
        PendingStore::new(&db),
        settings.qubs.pending_list_max_age(),
    ));
    let outbox = Outbox::new(&db, metrics.store.clone());
    let console_store = crate::console::store::open(&db);
    let audit = crate::console::audit::AuditLog::new(console_store.clone());
    let history = crate::console::history::History::new(console_store);
    let stats = outbox.stats(false).await?;
    tracing::info!(
        backend = db.backend().as_str(),
        store = %db.location(),
        replica = %db.replica().id,
        pending = stats.pending,
        dead = stats.dead,
        ack_mode = ?settings.results.ack_mode,
        "outbox open"
    );
    let results = Arc::new(Results {
        client: client.clone(),
        mappings: mappings.clone(),
        config_values: settings.mappings.values.clone(),
        outbox,
        settings: settings.results.clone(),
        metrics: metrics.clone(),
        unmapped: metrics.unmapped.clone(),
    });
    let mllp = if settings.mllp.enabled {
        let handler = Arc::new(crate::results::mllp::OruOverMllp {
            results: results.clone(),
            domain: settings
                .mllp
                .domain
                .clone()
                .unwrap_or_else(|| settings.qubs.domains[0].clone()),
            max_frame_bytes: settings.mllp.max_frame_bytes,
        });
        let server = crate::mllp::start(
            &settings.mllp,
            handler,
            metrics.mllp.clone(),
            shutdown.clone(),
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!("MLLP listener (mllp.listen {}): {e}", settings.mllp.listen)
        })?;
        Some(server)
    } else {
        None
    };
    let worker = tokio::spawn(crate::results::worker::run(
        results.clone(),
        pending.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let feed = Feed::open(&db, &settings.feed).await?;
    let mut feed_tasks = Vec::new();
    if settings.feed.enabled {
        let watcher = Arc::new(crate::feed::watcher::Watcher {
            feed: feed.clone(),
            client: client.clone(),
            pending: pending.clone(),
            mappings: mappings.clone(),
            config_values: settings.mappings.values.clone(),
            settings: settings.feed.clone(),
            metrics: metrics.feed.clone(),
            missed: Default::default(),
            unmapped: metrics.unmapped.clone(),
        });
        for domain in settings.feed.watched(&settings.qubs.domains) {
            let (watcher, polled) = (watcher.clone(), domain.clone());
            feed_tasks.push(tokio::spawn(leader::lead(
                db.clone(),
                Role::Poll,
                domain,
                metrics.store.clone(),
                shutdown.clone(),
                move |term| watcher.clone().run(polled.clone(), term.stop),
            )));
        }
        for destination in &settings.feed.destinations {
            tracing::info!(
                destination = %destination.name,
                kind = destination.kind.as_str(),
                target = %destination.target(),
                "order feed destination"
            );
            let (feed, settings, feed_metrics) =
                (feed.clone(), destination.clone(), metrics.feed.clone());
            feed_tasks.push(tokio::spawn(leader::lead(
                db.clone(),
                Role::Deliver,
                destination.name.clone(),
                metrics.store.clone(),
                shutdown.clone(),
                move |term| {
                    crate::feed::deliver::run(
                        feed.clone(),
                        settings.clone(),
                        feed_metrics.clone(),
                        term,
                    )
                },
            )));
        }
    }
    {
        let (db_, feed) = (db.clone(), settings.feed.enabled.then(|| feed.clone()));
        let hours = settings.feed.event_retention_hours;
        feed_tasks.push(tokio::spawn(leader::lead(
            db.clone(),
            Role::Retention,
            "cluster".into(),
            metrics.store.clone(),
            shutdown.clone(),
            move |term| retention(db_.clone(), feed.clone(), hours, term.stop),
        )));
    }
    let mut console_tasks = Vec::new();
    if let Some(mount) = &console_mount {
        let samples = Arc::new(crate::console::samples::Samples::new(
            metrics.clone(),
            settings
                .feed
                .destinations
                .iter()
                .map(|d| d.name.clone())
                .collect(),
        ));
        console_tasks.push(tokio::spawn(samples.clone().run(shutdown.clone())));
        mount.set(Arc::new(crate::console::Console {
            access: crate::console::Access::new(&settings.console),
            outbox: results.outbox.clone(),
            feed: settings.feed.enabled.then(|| feed.clone()),
            feed_destinations: settings.feed.destinations.clone(),
            feed_domains: settings.feed.watched(&settings.qubs.domains),
            readiness: readiness.clone(),
            mappings: mappings.clone(),
            pending: pending.clone(),
            metrics: metrics.clone(),
            samples,
            audit,
            history,
            promotions: Default::default(),
            domains: settings.qubs.domains.clone(),
            config_values: settings.mappings.values.clone(),
        }));
        tracing::info!(
            users = settings.console.users.len(),
            "web console at http://{admin_addr}/console/"
        );
    }
    let ctx = Arc::new(grpc::Context {
        client: client.clone(),
        metrics: metrics.clone(),
        mappings: mappings.clone(),
        results,
        pending: pending.clone(),
        feed: settings.feed.enabled.then(|| feed.clone()),
        feed_destinations: settings.feed.destinations.clone(),
        domains: settings.qubs.domains.clone(),
        config_values: settings.mappings.values.clone(),
        page_size: settings.qubs.page_size,
        fetch_concurrency: settings.grpc.fetch_concurrency,
    });
    let mllp_addr = mllp.as_ref().map(|m| m.addr);
    let grpc_listen: SocketAddr = settings.server.grpc_listen.parse()?;
    let grpc = grpc::serve(ctx, &settings.grpc, grpc_listen, shutdown.clone()).await?;

    let serving = Arc::new(Serving {
        qubs_refused: Default::default(),
        store_down: Default::default(),
        mappings: mappings.clone(),
        health: grpc.health.clone(),
    });
    serving.publish().await;
    let mut reloads = mappings.subscribe();
    let on_reload = serving.clone();
    let stop = shutdown.clone();
    let reload_watch = tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = reloads.changed() => {
                    if changed.is_err() { return; }
                    on_reload.publish().await;
                }
                _ = stop.cancelled() => return,
            }
        }
    });
    readiness.set_mappings(mappings.clone());
    let store_watch = tokio::spawn(watch_store(
        db.clone(),
        metrics.clone(),
        readiness.clone(),
        serving.clone(),
        shutdown.clone(),
    ));
    let probe = tokio::spawn(watch_qubs(
        pending,
        settings.qubs.domains.clone(),
        Duration::from_secs(settings.server.qubs_probe_interval_secs),
        readiness.clone(),
        serving,
        shutdown,
    ));
    Ok(RunningService {
        admin_addr,
        grpc_addr: grpc.addr,
        mllp_addr,
        metrics,
        readiness,
        db,
        tasks: {
            let mut tasks = vec![
                admin_task,
                grpc.task,
                probe,
                store_watch,
                reload_watch,
                worker,
            ];
            tasks.extend(mllp.map(|m| m.task));
            tasks.extend(feed_tasks);
            tasks.extend(console_tasks);
            tasks
        },
        grace: Duration::from_secs(settings.server.shutdown_grace_secs),
        shutdown: stop_token,
    })
}

impl RunningService {
    /// Runs until shutdown, then waits for every task to finish, at most the grace period.
    pub async fn wait(self) {
        let mut all = Box::pin(futures::future::join_all(self.tasks));
        tokio::select! {
            _ = &mut all => {}
            _ = self.shutdown.cancelled() => {
                if tokio::time::timeout(self.grace, all).await.is_err() {
                    tracing::warn!(
                        grace_secs = self.grace.as_secs(),
                        "in-flight work did not finish within the shutdown grace period"
                    );
                }
            }
        }
        self.db.stopped().await;
    }
}

/// Prunes old feed events and forgotten replicas hourly (and once at start); the retention
/// leader runs it, so one replica does it for the cluster.
async fn retention(
    db: Database,
    feed: Option<Arc<Feed>>,
    retention_hours: u64,
    stop: CancellationToken,
) {
    loop {
        if let Some(feed) = &feed {
            match feed
                .prune(Duration::from_secs(retention_hours * 3600))
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "pruned old feed events"),
                Err(e) => tracing::warn!(error = %e, "feed event pruning failed"),
            }
        }
        if let Database::Postgres(pg) = &db {
            match pg.prune_replicas(FORGET_REPLICAS_AFTER).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(replicas = n, "forgot replicas silent for a week"),
                Err(e) => tracing::warn!(error = %e, "replica pruning failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Beats this replica's heartbeat, which also checks that the store answers: readiness and
/// gRPC health are NOT_SERVING while it does not (results could not be stored, so they
/// would be answered AE). Publishes the pool's use.
async fn watch_store(
    db: Database,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    serving: Arc<Serving>,
    shutdown: CancellationToken,
) {
    let every = (db.lease() / 3).min(Duration::from_secs(2));
    let mut was_ok = true;
    loop {
        let beat: Result<(), StoreError> = tokio::select! {
            b = tokio::time::timeout(every.max(Duration::from_secs(1)), db.heartbeat()) => {
                b.unwrap_or_else(|_| Err(StoreError::Unavailable("no answer in time".into())))
            }
            _ = shutdown.cancelled() => return,
        };
        let ok = beat.is_ok();
        let changed = ok != was_ok;
        if changed {
            match &beat {
                Ok(()) => tracing::info!(store = %db.location(), "the store answers again"),
                Err(e) => {
                    tracing::error!(store = %db.location(), error = %e, "the store does not answer; results are refused (AE) until it does")
                }
            }
            was_ok = ok;
        }
        readiness.set_store(StoreHealth {
            backend: db.backend().as_str(),
            ready: ok,
            checked_at: jiff::Timestamp::now().to_string(),
            error: beat.err().map(|e| e.to_string()),
            replica: db.replica().id.clone(),
        });
        if changed {
            // Health watchers hear of changes only.
            serving
                .store_down
                .store(!ok, std::sync::atomic::Ordering::Relaxed);
            serving.publish().await;
        }
        if let Some(pool) = db.pool_use() {
            metrics.store.pool_use(pool);
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// What decides the gRPC health status: engines should not be sent here while QUBS refuses
/// the bridge's credentials, no good mapping set is loaded, or the store does not answer.
struct Serving {
    qubs_refused: std::sync::atomic::AtomicBool,
    store_down: std::sync::atomic::AtomicBool,
    mappings: Arc<LiveMappings>,
    health: grpc::Health,
}

impl Serving {
    async fn publish(&self) {
        let ok = !self.qubs_refused.load(std::sync::atomic::Ordering::Relaxed)
            && !self.store_down.load(std::sync::atomic::Ordering::Relaxed)
            && self.mappings.is_loaded();
        self.health.set(ok).await;
    }
}

/// Checks every domain now and then on an interval, until shutdown.
async fn watch_qubs(
    pending: Arc<PendingList>,
    domains: Vec<String>,
    interval: Duration,
    readiness: Readiness,
    serving: Arc<Serving>,
    shutdown: CancellationToken,
) {
    loop {
        let mut refused = false;
        for domain in &domains {
            let health = tokio::select! {
                h = check_domain(&pending, domain) => h,
                _ = shutdown.cancelled() => return,
            };
            if health.ready {
                tracing::info!(
                    domain,
                    pending = health.pending,
                    sites = health.sites,
                    time_zones = %health.time_zones,
                    warnings = health.warnings.len(),
                    "QUBS domain ready"
                );
            } else {
                tracing::warn!(
                    domain,
                    error = health.error.as_deref(),
                    "QUBS domain not ready"
                );
            }
            refused |= health.credentials_refused;
            readiness.set(domain, health);
        }
        serving
            .qubs_refused
            .store(refused, std::sync::atomic::Ordering::Relaxed);
        serving.publish().await;
        // A round reads every pending page; give the memory it freed back to the system so
        // an idle bridge stays small (glibc keeps freed heap otherwise).
        release_free_memory();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Returns the allocator's free pages to the operating system (glibc; elsewhere a no-op).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks the allocator's own free lists
    // under the allocator's locks, and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One round trip through what the bridge needs from a domain: a token and the pending
/// list (all pages, which also refreshes the [`PendingList`]). Ready means those answered.
/// Site time zones are looked at too, but never make a domain not ready: configuration
/// stands in for the (assumed) sites endpoint, and what is amiss is a warning.
pub async fn check_domain(pending: &PendingList, domain: &str) -> DomainHealth {
    let client = pending.client();
    let mut warnings = Vec::new();
    let listed: Result<usize, qubs::Error> = async {
        let pass = pending.begin(domain);
        let mut pages = std::pin::pin!(client.pending_pages(domain));
        let (mut count, mut without_ids) = (0usize, 0usize);
        while let Some(page) = pages.try_next().await? {
            count += page.appointments.len();
            if page.appointments.is_empty()
                && !page.skipped.is_empty()
                && page.skipped.iter().all(|s| s.id.is_none())
            {
                without_ids += page.skipped.len();
            }
            if let Err(e) = pending.record(&pass, &page.appointments).await {
                tracing::warn!(domain, error = %e, "could not store the pending list");
            }
        }
        pending.complete(pass).await;
        if without_ids > 0 {
            warnings.push(format!(
                "{without_ids} pending item(s) on pages where no item had an appointmentId: QUBS may name the appointment id differently, and those appointments cannot be read"
            ));
        }
        Ok(count)
    }
    .await;
    let sites = if client.uses_sites_endpoint() {
        match client.sites(domain).await {
            Ok(sites) => {
                for site in &sites {
                    let zone = client.site_for(domain, Some(&site.site_name)).await;
                    let usable = zone.as_ref().is_ok_and(|s| {
                        s.as_ref()
                            .and_then(|s| s.time_zone.as_deref())
                            .is_some_and(|z| jiff::tz::TimeZone::get(z).is_ok())
                    });
                    if !usable {
                        let why = match zone {
                            Err(e) => e.to_string(),
                            Ok(_) => "none from QUBS or configuration".to_string(),
                        };
                        warnings.push(format!(
                            "site `{}`: no usable time zone ({why})",
                            site.site_name
                        ));
                    }
                }
                Some(sites.len())
            }
            // Said once by the client; configuration stands in.
            Err(e) if qubs::sites::endpoint_missing(&e) => None,
            Err(e) => {
                warnings.push(format!("the sites endpoint failed: {e}"));
                None
            }
        }
    } else {
        None
    };
    let checked_at = jiff::Timestamp::now().to_string();
    let time_zones = client.time_zone_source(domain).describe().to_string();
    match listed {
        Ok(pending) => DomainHealth {
            ready: true,
            checked_at,
            pending: Some(pending),
            sites,
            time_zones,
            warnings,
            error: None,
            credentials_refused: false,
        },
        Err(e) => DomainHealth {
            ready: false,
            checked_at,
            pending: None,
            sites,
            time_zones,
            warnings,
            // 401 (after one re-authentication) or a refused token request; a 403 is one
            // domain missing from the token, which the other domains do not suffer from.
            credentials_refused: e.status().is_some_and(|s| s.as_u16() == 401)
                || matches!(
                    e.kind,
                    qubs::ErrorKind::Token {
                        status: Some(_),
                        ..
                    }
                ),
            error: Some(e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_components_migrations_are_numbered_from_one() {
        for component in super::SCHEMA {
            crate::store::migrate::check_numbering(component);
        }
    }
}
