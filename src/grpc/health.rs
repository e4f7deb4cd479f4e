//! `grpc.health.v1`: `Check` and `Watch` as tonic-health serves them, with what the bridge
//! adds for shutting down: every status turns NOT_SERVING first (load balancers and
//! client-side health checks stop sending calls), then open `Watch` streams end. A `Watch`
//! never ends by itself, so without this one open watcher would hold the graceful shutdown
//! until its grace period ran out.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_server::{self, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// The services whose status is reported, besides the whole server (`""`).
const SERVICES: [&str; 5] = [
    "qubs_bridge.v1.OrderService",
    "qubs_bridge.v1.ResultService",
    "qubs_bridge.v1.OutboxService",
    "qubs_bridge.v1.FeedService",
    "qubs_bridge.v1.MappingService",
];

/// Reports the API as serving or not in `grpc.health.v1`.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    /// Sets the whole server's status and each API service's.
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        for service in SERVICES {
            self.reporter.set_service_status(service, status).await;
        }
    }
}

/// The health service, and the reporter that sets its statuses. At `shutdown` everything
/// turns NOT_SERVING, then open watches end.
pub(super) async fn service(
    shutdown: CancellationToken,
) -> (Health, HealthServer<impl health_server::Health>) {
    let reporter = HealthReporter::new();
    let health = Health {
        reporter: reporter.clone(),
    };
    health.set(true).await;
    let watches_end = CancellationToken::new();
    let on_shutdown = health.clone();
    let end = watches_end.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        on_shutdown.set(false).await;
        end.cancel();
    });
    let service = EndingWatches {
        inner: HealthService::from_health_reporter(reporter),
        end: watches_end,
    };
    (health, HealthServer::new(service))
}

/// tonic-health's service, with `Watch` streams that end at shutdown.
struct EndingWatches {
    inner: HealthService,
    end: CancellationToken,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl health_server::Health for EndingWatches {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let statuses = self.inner.watch(request).await?.into_inner();
        Ok(Response::new(Box::pin(until_shutdown(
            statuses,
            self.end.clone(),
        ))))
    }
}

/// `statuses` until `end`, whose last message is NOT_SERVING: the status set before `end`
/// is sent first (the stream is polled before `end`), and one is added if it was not.
/// A status equal to the one last sent is not sent again: the readiness probe sets the
/// status every round, and `Watch` reports changes.
fn until_shutdown(
    statuses: impl Stream<Item = Result<HealthCheckResponse, Status>> + Send + Unpin + 'static,
    end: CancellationToken,
) -> impl Stream<Item = Result<HealthCheckResponse, Status>> + Send {
    let not_serving = WireStatus::NotServing as i32;
    futures::stream::unfold(
        (statuses, end, None::<i32>, false),
        move |(mut statuses, end, mut last, ended)| async move {
            if ended {
                return None;
            }
            loop {
                tokio::select! {
                    biased;
                    item = statuses.next() => {
                        let item = item?;
                        if let Ok(r) = &item {
                            if last == Some(r.status) {
                                continue;
                            }
                            last = Some(r.status);
                        }
                        return Some((item, (statuses, end, last, false)));
                    }
                    _ = end.cancelled() => {
                        return (last != Some(not_serving)).then(|| {
                            let last_word = HealthCheckResponse { status: not_serving };
                            (Ok(last_word), (statuses, end, last, true))
                        });
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: WireStatus) -> Result<HealthCheckResponse, Status> {
        Ok(HealthCheckResponse { status: s as i32 })
    }

    #[tokio::test]
    async fn a_watch_reports_changes_only_and_ends_not_serving() {
        let sent = futures::stream::iter([
            status(WireStatus::Serving),
            status(WireStatus::Serving),
            status(WireStatus::NotServing),
            status(WireStatus::NotServing),
            status(WireStatus::Serving),
        ])
        .chain(futures::stream::pending());
        let end = CancellationToken::new();
        let mut watch = Box::pin(until_shutdown(Box::pin(sent), end.clone()));
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(watch.next().await.unwrap().unwrap().status);
        }
        end.cancel();
        seen.push(watch.next().await.unwrap().unwrap().status);
        assert!(watch.next().await.is_none(), "the watch ends at shutdown");
        let (serving, not) = (WireStatus::Serving as i32, WireStatus::NotServing as i32);
        assert_eq!(seen, [serving, not, serving, not]);
    }
}
