//! The long-running service: wires the QUBS client to the bridge's endpoints and keeps
//! watch on QUBS. Started by `qubs-bridge serve`.

use std::net::SocketAddr;
use std::time::Duration;

use futures::TryStreamExt;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, DomainHealth, Readiness};
use crate::config::Settings;
use crate::qubs;

/// A started service; [`RunningService::wait`] returns once it has shut down.
pub struct RunningService {
    pub admin_addr: SocketAddr,
    pub readiness: Readiness,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    grace: Duration,
}

/// Starts the admin endpoint and the QUBS checks; everything stops when `shutdown` is
/// cancelled.
pub async fn start(
    settings: &Settings,
    client: qubs::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningService> {
    let readiness = Readiness::default();
    let admin_listen: SocketAddr = settings.server.admin_listen.parse()?;
    let (admin_addr, admin_task) = admin::serve(
        admin_listen,
        readiness.clone(),
        settings.qubs.domains.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot listen on server.admin_listen {admin_listen}: {e}"))?;
    tracing::info!(%admin_addr, "admin endpoint listening (/healthz, /readyz)");

    let probe = tokio::spawn(watch_qubs(
        client,
        settings.qubs.domains.clone(),
        Duration::from_secs(settings.server.qubs_probe_interval_secs),
        readiness.clone(),
        shutdown,
    ));
    Ok(RunningService {
        admin_addr,
        readiness,
        tasks: vec![admin_task, probe],
        grace: Duration::from_secs(settings.server.shutdown_grace_secs),
    })
}

impl RunningService {
    /// Waits for every task to finish after shutdown, at most the grace period.
    pub async fn wait(self) {
        let all = futures::future::join_all(self.tasks);
        if tokio::time::timeout(self.grace, all).await.is_err() {
            tracing::warn!(
                grace_secs = self.grace.as_secs(),
                "in-flight work did not finish within the shutdown grace period"
            );
        }
    }
}

/// Checks every domain now and then on an interval, until shutdown.
async fn watch_qubs(
    client: qubs::Client,
    domains: Vec<String>,
    interval: Duration,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    loop {
        for domain in &domains {
            let health = tokio::select! {
                h = check_domain(&client, domain) => h,
                _ = shutdown.cancelled() => return,
            };
            if health.ready {
                tracing::info!(
                    domain,
                    pending = health.pending,
                    sites = health.sites,
                    "QUBS domain ready"
                );
            } else {
                tracing::warn!(
                    domain,
                    error = health.error.as_deref(),
                    "QUBS domain not ready"
                );
            }
            readiness.set(domain, health);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One round trip through what the bridge needs from a domain: a token, the pending list
/// (all pages) and every site's time zone.
pub async fn check_domain(client: &qubs::Client, domain: &str) -> DomainHealth {
    let result: Result<(usize, usize), qubs::Error> = async {
        let pending = client
            .pending_pages(domain)
            .try_fold(
                0usize,
                |n, page| async move { Ok(n + page.appointments.len()) },
            )
            .await?;
        let sites = client.sites(domain).await?;
        for site in &sites {
            client.site_time_zone(domain, &site.site_name).await?;
        }
        Ok((pending, sites.len()))
    }
    .await;
    let checked_at = jiff::Timestamp::now().to_string();
    match result {
        Ok((pending, sites)) => DomainHealth {
            ready: true,
            checked_at,
            pending: Some(pending),
            sites: Some(sites),
            error: None,
        },
        Err(e) => DomainHealth {
            ready: false,
            checked_at,
            pending: None,
            sites: None,
            error: Some(e.to_string()),
        },
    }
}
