//! `FeedService`: the order feed as a gRPC stream (`WatchOrders`) and its status.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Context;
use super::pb::{self, OutputFormat, feed_service_server::FeedService};
use crate::feed::resend::{ResendError, ResendRequest};
use crate::feed::{EventKind, Feed};
use crate::store::StoreError;

/// Events sent ahead of the caller before the stream waits for it to read.
const STREAM_BUFFER: usize = 64;
/// Events read from the store at a time.
const PAGE: usize = 256;

pub struct FeedApi {
    ctx: Arc<Context>,
}

impl FeedApi {
    pub fn new(ctx: Arc<Context>) -> FeedApi {
        FeedApi { ctx }
    }
}

fn time(ms: Option<i64>) -> String {
    ms.map(super::outbox::time).unwrap_or_default()
}

fn kind(k: EventKind) -> pb::FeedEventKind {
    match k {
        EventKind::New => pb::FeedEventKind::New,
        EventKind::Changed => pb::FeedEventKind::Changed,
        EventKind::Removed => pb::FeedEventKind::Removed,
    }
}

impl Context {
    fn feed(&self) -> Result<&Arc<Feed>, Status> {
        self.feed.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "the order feed is not enabled on this bridge (feed.enabled = false)",
            )
        })
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchOrdersResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FeedService for FeedApi {
    type WatchOrdersStream = EventStream;

    async fn watch_orders(
        &self,
        request: Request<pb::WatchOrdersRequest>,
    ) -> Result<Response<Self::WatchOrdersStream>, Status> {
        self.ctx
            .call("WatchOrders", request, |who, req| async move {
                who.authorize(&req.domain)?;
                let formats = super::orders::formats(&req.formats, OutputFormat::Hl7OrmO01)?;
                let feed = self.ctx.feed()?.clone();
                let cursor = req.after_cursor.trim();
                let after = if cursor.is_empty() {
                    feed.latest_event_id()
                } else {
                    let after: i64 = cursor.parse().map_err(|_| {
                        Status::invalid_argument(format!(
                            "after_cursor `{cursor}` is not a cursor from this API"
                        ))
                    })?;
                    let first = feed.first_event_id().await.map_err(storage)?;
                    // Events between the cursor and the oldest retained one are gone.
                    if after > 0 && first > 0 && after + 1 < first {
                        return Err(Status::out_of_range(format!(
                            "cursor {after} is older than the oldest retained event ({first}); resynchronise with StreamPendingOrders, then watch from an empty cursor"
                        )));
                    }
                    after
                };
                let (tx, rx) = mpsc::channel(STREAM_BUFFER);
                tokio::spawn(stream_events(
                    self.ctx.clone(),
                    feed,
                    req.domain,
                    formats,
                    after,
                    tx,
                ));
                let stream: EventStream = Box::pin(ReceiverStream::new(rx));
                Ok(Response::new(stream))
            })
            .await
    }

    async fn retry_feed_deliveries(
        &self,
        request: Request<pb::RetryFeedDeliveriesRequest>,
    ) -> Result<Response<pb::RetryFeedDeliveriesResponse>, Status> {
        self.ctx
            .call("RetryFeedDeliveries", request, |who, req| async move {
                self.retry(&who, req).await.map(Response::new)
            })
            .await
    }

    async fn resend_feed_orders(
        &self,
        request: Request<pb::ResendFeedOrdersRequest>,
    ) -> Result<Response<pb::ResendFeedOrdersResponse>, Status> {
        self.ctx
            .call("ResendFeedOrders", request, |who, req| async move {
                self.resend(&who, req).await.map(Response::new)
            })
            .await
    }

    async fn get_feed_status(
        &self,
        request: Request<pb::GetFeedStatusRequest>,
    ) -> Result<Response<pb::GetFeedStatusResponse>, Status> {
        self.ctx
            .call("GetFeedStatus", request, |who, _req| async move {
                let Some(feed) = &self.ctx.feed else {
                    return Ok(Response::new(pb::GetFeedStatusResponse::default()));
                };
                let now = crate::store::now_ms();
                let statuses = feed.destination_status().await.map_err(storage)?;
                let destinations = self
                    .ctx
                    .feed_destinations
                    .iter()
                    .zip(statuses)
                    .map(|(d, s)| pb::FeedDestinationStatus {
                        name: d.name.clone(),
                        kind: d.kind.as_str().into(),
                        target: d.target(),
                        pending: s.pending,
                        delivered: s.delivered,
                        dead: s.dead,
                        oldest_pending_seconds: s
                            .oldest_pending_at_ms
                            .map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0),
                        last_ack_code: s.last_ack_code.unwrap_or_default(),
                        last_ack_at_utc: time(s.last_ack_at_ms),
                        last_error: s.last_error.unwrap_or_default(),
                        last_error_at_utc: time(s.last_error_at_ms),
                    })
                    .collect();
                let allowed = who.domains();
                let watched: Vec<String> = self
                    .ctx
                    .domains
                    .iter()
                    .filter(|d| allowed.contains(d))
                    .cloned()
                    .collect();
                let watches = feed
                    .watch_status(watched)
                    .await
                    .map_err(storage)?
                    .into_iter()
                    .map(|w| pb::FeedWatchStatus {
                        domain: w.domain,
                        baselined: w.baselined,
                        polls: w.polls,
                        last_poll_at_utc: time(w.last_poll_at_ms),
                        last_error: w.last_error.unwrap_or_default(),
                        tracked_orders: w.tracked_orders,
                    })
                    .collect();
                Ok(Response::new(pb::GetFeedStatusResponse {
                    enabled: true,
                    destinations,
                    watches,
                }))
            })
            .await
    }
}

impl FeedApi {
    async fn retry(
        &self,
        who: &super::auth::Caller,
        req: pb::RetryFeedDeliveriesRequest,
    ) -> Result<pb::RetryFeedDeliveriesResponse, Status> {
        // The caller's rights first: nothing about the feed is told to a stranger.
        let domains = if req.domain.is_empty() {
            who.domains()
        } else {
            who.authorize(&req.domain)?;
            vec![req.domain]
        };
        let feed = self.ctx.feed()?;
        if !self
            .ctx
            .feed_destinations
            .iter()
            .any(|d| d.name == req.destination)
        {
            return Err(Status::not_found(format!(
                "no feed destination named `{}`",
                req.destination
            )));
        }
        let requeued = feed
            .requeue(&req.destination, domains)
            .await
            .map_err(storage)?;
        Ok(pb::RetryFeedDeliveriesResponse {
            requeued: requeued as u64,
        })
    }
}

impl FeedApi {
    async fn resend(
        &self,
        who: &super::auth::Caller,
        req: pb::ResendFeedOrdersRequest,
    ) -> Result<pb::ResendFeedOrdersResponse, Status> {
        who.authorize(&req.domain)?;
        let feed = self.ctx.feed()?;
        if !self.ctx.mappings.is_loaded() {
            return Err(Status::failed_precondition(
                ResendError::NotLoaded.to_string(),
            ));
        }
        let appointment_id = req.appointment_id.trim();
        let request = ResendRequest {
            domain: req.domain.clone(),
            appointment_id: (!appointment_id.is_empty()).then(|| appointment_id.to_string()),
            changed_only: req.changed_only,
            dry_run: req.dry_run,
        };
        let mappings = self.ctx.mappings.current();
        let report = match feed.resend(&mappings, &request).await {
            Ok(r) => r,
            Err(e @ ResendError::NotTracked { .. }) => {
                return Err(Status::not_found(e.to_string()));
            }
            Err(e @ ResendError::NotLoaded) => {
                return Err(Status::failed_precondition(e.to_string()));
            }
            Err(ResendError::Store(StoreError::NotLeader { scope, .. })) => {
                return Err(Status::failed_precondition(format!(
                    "another replica polls domain `{scope}`; only it can resend its orders (`store check` shows which), or use --dry-run here"
                )));
            }
            Err(ResendError::Store(e)) => return Err(storage(e)),
        };
        if !request.dry_run && report.resent > 0 {
            tracing::info!(
                domain = %request.domain,
                resent = report.resent,
                changed_only = request.changed_only,
                "feed orders resent on request"
            );
        }
        let (example_appointment_id, example_changes) = match report.example {
            Some(e) => (
                e.appointment_id,
                e.diffs
                    .into_iter()
                    .map(|d| pb::FieldChange {
                        field: d.path,
                        before_absent: d.expected.is_none(),
                        after_absent: d.actual.is_none(),
                        before: d.expected.unwrap_or_default(),
                        after: d.actual.unwrap_or_default(),
                    })
                    .collect(),
            ),
            None => (String::new(), Vec::new()),
        };
        Ok(pb::ResendFeedOrdersResponse {
            mapping_set_version: report.mapping_version,
            tracked: report.tracked as u64,
            changed: report.changed as u64,
            unchanged: report.unchanged as u64,
            unknown: report.unknown as u64,
            unmappable: report.unmappable as u64,
            resent: report.resent as u64,
            example_appointment_id,
            example_changes,
        })
    }
}

fn storage(e: crate::store::StoreError) -> Status {
    tracing::error!(error = %e, "feed store read failed");
    Status::unavailable("the bridge's store is unavailable; try again")
}

/// Feeds one WatchOrders call: stored events after `after`, then new ones as they are
/// recorded, until the caller goes away.
async fn stream_events(
    ctx: Arc<Context>,
    feed: Arc<Feed>,
    domain: String,
    formats: Vec<OutputFormat>,
    mut after: i64,
    tx: mpsc::Sender<Result<pb::WatchOrdersResponse, Status>>,
) {
    let stored_only = formats
        .iter()
        .all(|f| matches!(f, OutputFormat::Hl7OrmO01 | OutputFormat::SourceJson));
    let mut latest = feed.subscribe();
    loop {
        // Marked seen before reading, so that an event recorded meanwhile wakes us.
        latest.borrow_and_update();
        let events = match feed.events(&domain, after, PAGE).await {
            Ok(e) => e,
            Err(e) => {
                let _ = tx.send(Err(storage(e))).await;
                return;
            }
        };
        let full = events.len() == PAGE;
        for event in events {
            after = event.id;
            let item = serde_json::from_slice::<Value>(&event.document)
                .map_err(|_| Status::internal(format!("event {} is unreadable", event.id)))
                .and_then(|document| {
                    ctx.render_document(
                        &event.domain,
                        &event.appointment_id,
                        &document,
                        &formats,
                        Some(&event.message),
                    )
                })
                .map(|mut order| {
                    // The stored message is what the event's mapping set rendered.
                    if stored_only {
                        order.mapping_set_version = event.mapping_version.clone();
                    }
                    pb::WatchOrdersResponse {
                        cursor: event.id.to_string(),
                        kind: kind(event.kind) as i32,
                        order: Some(order),
                        detected_at_utc: time(Some(event.created_at_ms)),
                    }
                });
            if tx.send(item).await.is_err() {
                return;
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            changed = latest.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}
