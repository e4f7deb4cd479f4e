//! One leader per cluster for work that must happen once: polling a domain, draining a
//! destination, retention. Leadership is a lease row in the database
//! (`bridge_leases`: role, scope, holder, lease end by the database clock), taken when it is
//! free or has run out, and renewed every third of `store.lease_secs`.
//!
//! **A replica that loses its lease stops before another can start.** The leader keeps a
//! local deadline: the moment it *sent* its last successful renewal, plus the lease, minus a
//! safety margin of a fifth of the lease. The database computed the lease end from its own
//! clock *after* that moment, so the local deadline always comes first, by at least the
//! margin. When the deadline passes without a renewal (the database unreachable, or this
//! process stalled), or a renewal finds another holder, the term ends: the work is told to
//! drop what it is doing ([`Term::lost`]) and is awaited before this replica tries again.
//! Writes the leader makes are also fenced in the database (the feed checks the lease in
//! the same transaction), so even a stalled leader cannot record after its lease ran out.
//!
//! On shutdown the work finishes what it is doing ([`Term::stop`]) and the lease is given
//! back at once, so another replica takes over within one retry interval instead of a
//! whole lease.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Database, StoreMetrics};

/// Work one replica of the cluster does.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Role {
    /// Polling one domain's pending list for the order feed (scope: the domain).
    Poll,
    /// Draining one feed destination's queue (scope: the destination).
    Deliver,
    /// Pruning old feed events and replica records (scope: `cluster`).
    Retention,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Poll => "poll",
            Role::Deliver => "deliver",
            Role::Retention => "retention",
        }
    }

    /// The metric label the scope goes in.
    pub fn scope_label(self) -> Option<&'static str> {
        match self {
            Role::Poll => Some("domain"),
            Role::Deliver => Some("destination"),
            Role::Retention => None,
        }
    }
}

/// One term of leadership, as the work sees it.
#[derive(Clone, Debug, Default)]
pub struct Term {
    /// Finish what you are doing and return (shutdown, or the lease is gone).
    pub stop: CancellationToken,
    /// The lease is gone: drop in-flight work now, another replica may start soon.
    pub lost: CancellationToken,
}

impl Term {
    fn new() -> Term {
        Term::default()
    }

    fn end(&self, lost: bool) {
        if lost {
            self.lost.cancel();
        }
        self.stop.cancel();
    }
}

/// How the leadership loop paces itself for a given lease.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease: Duration,
    pub renew_every: Duration,
    pub margin: Duration,
    pub retry_every: Duration,
}

impl Timing {
    pub fn for_lease(lease: Duration) -> Timing {
        Timing {
            lease,
            renew_every: lease / 3,
            margin: lease / 5,
            retry_every: (lease / 15).clamp(Duration::from_millis(100), Duration::from_secs(2)),
        }
    }
}

/// Leads `role` for `scope` whenever this replica can, running `work` for each term, until
/// `shutdown`. `work` must return soon after its term's [`Term::stop`] fires.
pub async fn lead<F, Fut>(
    db: Database,
    role: Role,
    scope: String,
    metrics: Arc<StoreMetrics>,
    shutdown: CancellationToken,
    work: F,
) where
    F: Fn(Term) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let timing = Timing::for_lease(db.lease());
    let name = role.as_str();
    metrics.leading(role, &scope, false);
    let mut warned = false;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let sent = Instant::now();
        let grant = tokio::select! {
            g = db.acquire_lease(name, &scope, timing.lease) => g,
            _ = shutdown.cancelled() => return,
        };
        match grant {
            Ok(g) if g.held => {
                warned = false;
                if g.takeover {
                    metrics.takeover(name);
                }
                tracing::info!(
                    role = name,
                    scope = %scope,
                    takeover = g.takeover,
                    replica = %db.replica().id,
                    "leading"
                );
            }
            Ok(_) => {
                tokio::select! {
                    _ = tokio::time::sleep(timing.retry_every) => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(role = name, scope = %scope, error = %e, "cannot reach the store to take the lead; retrying");
                    warned = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(timing.retry_every) => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
        }
        metrics.leading(role, &scope, true);
        let term = Term::new();
        let mut task = tokio::spawn(work(term.clone()));
        let mut deadline = sent + timing.lease - timing.margin;
        let mut next_renewal = Instant::now() + timing.renew_every;
        let ended = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_renewal.min(deadline)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break End::Lost("the lease could not be renewed in time");
                    }
                    let sent = now;
                    match tokio::time::timeout(deadline - now, db.acquire_lease(name, &scope, timing.lease)).await {
                        Ok(Ok(g)) if g.held => {
                            deadline = sent + timing.lease - timing.margin;
                            next_renewal = sent + timing.renew_every;
                        }
                        Ok(Ok(_)) => break End::Lost("another replica holds the lease"),
                        Ok(Err(e)) => {
                            tracing::warn!(role = name, scope = %scope, error = %e, "lease renewal failed; retrying until the lease runs out");
                            next_renewal = Instant::now() + timing.retry_every;
                        }
                        Err(_) => break End::Lost("the lease could not be renewed in time"),
                    }
                }
                _ = shutdown.cancelled() => break End::Shutdown,
                _ = &mut task => break End::WorkEnded,
            }
        };
        match ended {
            End::Lost(why) => {
                tracing::warn!(role = name, scope = %scope, reason = why, "lost the lead; stopping that work");
                term.end(true);
                let _ = task.await;
                metrics.leading(role, &scope, false);
            }
            End::Shutdown => {
                term.end(false);
                let _ = task.await;
                let _ = db.release_lease(name, &scope).await;
                metrics.leading(role, &scope, false);
                return;
            }
            End::WorkEnded => {
                // The work gave up on its own (a destination that cannot start): let another
                // replica try it.
                let _ = db.release_lease(name, &scope).await;
                metrics.leading(role, &scope, false);
                return;
            }
        }
    }
}

enum End {
    Lost(&'static str),
    Shutdown,
    WorkEnded,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_deadline_comes_well_before_the_lease_runs_out() {
        let t = Timing::for_lease(Duration::from_secs(30));
        assert_eq!(t.renew_every, Duration::from_secs(10));
        assert_eq!(t.margin, Duration::from_secs(6));
        assert_eq!(t.retry_every, Duration::from_secs(2));
        // Two renewals may fail before the term ends.
        assert!(t.renew_every * 2 < t.lease - t.margin);
        let short = Timing::for_lease(Duration::from_secs(2));
        assert!(short.retry_every > Duration::from_millis(100));
        assert!(short.retry_every < Duration::from_millis(200));
    }
}
