//! The HL7 order feed: watches QUBS for new, changed and removed orders and pushes them as
//! ORM^O01 to feed consumers (RIS, PACS worklists, dictation systems) over MLLP or as files,
//! and to interface engines over gRPC (`WatchOrders`).
//!
//! - The [`watcher`] polls each domain's pending list. An order is *new* the first time it
//!   is seen, *changed* when the fingerprint of the fields the order mappings read
//!   ([`crate::mapping::MappingSet::order_fingerprint`]) differs from the last one sent,
//!   and *removed* when it leaves the list — QUBS no longer has it or it is no longer
//!   pending, read back one by one since a pass can miss an order — (sent only with
//!   `on_removed = "send"`). Each
//!   event is mapped once (ORC-1 from the `order_control` table: NW, XO, CA) and stored
//!   with one delivery per destination in the same transaction, in the embedded
//!   [`Store`]. So a restart resumes where it stopped and nothing found is lost.
//! - Each destination ([`deliver`]) drains its own durable queue: one message at a time on
//!   one connection, in order per patient (or appointment), retrying with back-off; a
//!   stuck order holds back only the orders that share its key unless `ordering = "strict"`.
//!
//! Delivery is at least once: a crash between a consumer's ACK and its recording resends
//! that message with the same MSH-10, which HL7 receivers use to discard duplicates.

pub mod deliver;
mod settings;
mod store;
pub mod watcher;

use std::sync::Arc;

use tokio::sync::{Notify, watch};

pub use settings::{
    AckPolicy, DestinationKind, DestinationSettings, DestinationTls, FeedSettings, FirstRun,
    OnRemoved, Ordering, SettingsError,
};

use crate::store::{Store, StoreError};

/// The feed's tables, created by [`Store::open`].
pub const SCHEMA: &str = store::SCHEMA;

/// What happened to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    New,
    Changed,
    Removed,
}

impl EventKind {
    /// As stored, and as mapping files read it (`event.kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::New => "new",
            EventKind::Changed => "changed",
            EventKind::Removed => "removed",
        }
    }

    fn parse(s: &str) -> EventKind {
        match s {
            "changed" => EventKind::Changed,
            "removed" => EventKind::Removed,
            _ => EventKind::New,
        }
    }
}

/// An event the watcher found, mapped and ready to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub appointment_id: String,
    pub patient_id: Option<String>,
    pub kind: EventKind,
    pub fingerprint: String,
    /// The order document the mappings read, with `event.kind` set.
    pub document: Vec<u8>,
    /// The ORM^O01 (ER7) and its MSH-10.
    pub message: String,
    pub control_id: String,
    pub mapping_version: String,
}

/// An order taken into the watch state without an event (a first-run baseline).
#[derive(Debug, Clone)]
pub struct Baseline {
    pub appointment_id: String,
    pub patient_id: Option<String>,
    pub fingerprint: String,
    pub document: Vec<u8>,
}

/// A stored event, as `WatchOrders` streams it.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: i64,
    pub domain: String,
    pub appointment_id: String,
    pub kind: EventKind,
    pub document: Vec<u8>,
    pub message: String,
    pub mapping_version: String,
    pub created_at_ms: i64,
}

/// A delivery due now: the message and where it goes.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: i64,
    pub event_id: i64,
    pub domain: String,
    pub appointment_id: String,
    pub kind: EventKind,
    pub message: String,
    pub control_id: String,
    pub attempts: u32,
    pub created_at_ms: i64,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The consumer took it (or the file is in place); the ACK code when there was one.
    Delivered { ack_code: Option<String> },
    /// Try again at `next_at_ms`.
    Retry { next_at_ms: i64, reason: String },
    /// Given up: a dead letter, kept for operators.
    Dead {
        reason: String,
        ack_code: Option<String>,
    },
}

/// One destination's queue and last contact, for `feed status`.
#[derive(Debug, Clone, Default)]
pub struct DestinationStatus {
    pub name: String,
    pub pending: u64,
    pub delivered: u64,
    pub dead: u64,
    pub oldest_pending_at_ms: Option<i64>,
    pub last_ack_at_ms: Option<i64>,
    pub last_ack_code: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
}

/// One event of an order's history (the console's order timeline): what was sent, when,
/// with which mapping version, and how each destination took it.
#[derive(Debug, Clone)]
pub struct EventHistory {
    pub id: i64,
    pub kind: EventKind,
    /// The ORM^O01's MSH-10.
    pub control_id: String,
    pub mapping_version: String,
    pub created_at_ms: i64,
    pub deliveries: Vec<DeliveryHistory>,
}

/// A delivery given up on, for operators: which order, which message, and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: i64,
    pub domain: String,
    pub appointment_id: String,
    pub kind: EventKind,
    /// The ORM^O01's MSH-10.
    pub control_id: String,
    pub attempts: u32,
    pub ack_code: Option<String>,
    pub last_error: Option<String>,
    pub updated_at_ms: i64,
}

/// One destination's delivery of an event.
#[derive(Debug, Clone)]
pub struct DeliveryHistory {
    pub destination: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    pub attempts: u32,
    pub ack_code: Option<String>,
    pub last_error: Option<String>,
    pub updated_at_ms: i64,
}

/// One domain's watch, for `feed status`.
#[derive(Debug, Clone, Default)]
pub struct WatchStatus {
    pub domain: String,
    pub baselined: bool,
    pub polls: u64,
    pub last_poll_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub tracked_orders: u64,
}

/// The feed's handle on its part of the store; shared by the watcher, the destinations
/// and the gRPC API.
pub struct Feed {
    store: Arc<Store>,
    /// Destinations and the domains each takes.
    routes: Vec<(String, Vec<String>, Ordering)>,
    /// The newest event id, for `WatchOrders` streams waiting for more.
    latest: watch::Sender<i64>,
    /// Wakes destinations when deliveries were queued or released.
    pub(crate) queued: Notify,
}

impl Feed {
    /// The feed in `store`, routing events to the configured destinations.
    pub async fn open(store: Arc<Store>, settings: &FeedSettings) -> Result<Arc<Feed>, StoreError> {
        let latest = store.read(|tx, _| store::latest_event(tx)).await?;
        let routes = settings
            .destinations
            .iter()
            .map(|d| (d.name.clone(), d.domains.clone(), d.ordering))
            .collect();
        Ok(Arc::new(Feed {
            store,
            routes,
            latest: watch::channel(latest).0,
            queued: Notify::new(),
        }))
    }

    /// Fingerprints of the orders a domain's watch knows, by appointment id.
    pub async fn fingerprints(
        &self,
        domain: &str,
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let domain = domain.to_string();
        self.store
            .read(move |tx, _| store::fingerprints(tx, &domain))
            .await
    }

    /// The last document of a tracked order (to map its removal).
    pub async fn document(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (domain, id) = (domain.to_string(), appointment_id.to_string());
        self.store
            .read(move |tx, _| store::document(tx, &domain, &id))
            .await
    }

    /// Whether the domain's first complete poll has been recorded.
    pub async fn baselined(&self, domain: &str) -> Result<bool, StoreError> {
        let domain = domain.to_string();
        self.store
            .read(move |tx, _| store::baselined(tx, &domain))
            .await
    }

    /// Stores events (each with its deliveries) and baseline rows of a domain in one
    /// transaction, and forgets `removed` orders.
    pub async fn record(
        &self,
        domain: &str,
        events: Vec<NewEvent>,
        baseline: Vec<Baseline>,
        removed: Vec<String>,
    ) -> Result<(), StoreError> {
        if events.is_empty() && baseline.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let routes: Vec<(String, Ordering)> = self
            .routes
            .iter()
            .filter(|(_, domains, _)| domains.is_empty() || domains.iter().any(|d| d == domain))
            .map(|(name, _, ordering)| (name.clone(), *ordering))
            .collect();
        let domain = domain.to_string();
        let queued = !events.is_empty() && !routes.is_empty();
        let last = self
            .store
            .write(move |tx, now| {
                store::record(tx, &domain, &events, &baseline, &removed, &routes, now)
            })
            .await?;
        if let Some(last) = last {
            self.latest.send_replace(last);
        }
        if queued {
            self.queued.notify_waiters();
        }
        Ok(())
    }

    /// Notes a finished poll (complete or failed) of a domain.
    pub async fn polled(&self, domain: &str, error: Option<String>) -> Result<(), StoreError> {
        let domain = domain.to_string();
        self.store
            .write(move |tx, now| store::polled(tx, &domain, error.as_deref(), now))
            .await
    }

    /// Up to `limit` deliveries of a destination due now (see `store::due`).
    pub async fn due(
        &self,
        destination: &str,
        strict: bool,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let destination = destination.to_string();
        self.store
            .read(move |tx, now| store::due(tx, &destination, strict, now, limit))
            .await
    }

    /// When the destination's next delivery falls due, if any is pending.
    pub async fn next_due_at(&self, destination: &str) -> Result<Option<i64>, StoreError> {
        let destination = destination.to_string();
        self.store
            .read(move |tx, _| store::next_due_at(tx, &destination))
            .await
    }

    /// Records how deliveries ended, in one transaction.
    pub async fn settle(
        &self,
        destination: &str,
        outcomes: Vec<(i64, Outcome)>,
    ) -> Result<(), StoreError> {
        let destination = destination.to_string();
        self.store
            .write(move |tx, now| store::settle(tx, &destination, &outcomes, now))
            .await
    }

    /// Notes a failure that is not any one delivery's (the consumer is unreachable).
    pub async fn destination_error(&self, destination: &str, error: String) {
        let destination = destination.to_string();
        let _ = self
            .store
            .write(move |tx, now| store::destination_error(tx, &destination, &error, now))
            .await;
    }

    /// Events of `domain` after `after_id`, oldest first.
    pub async fn events(
        &self,
        domain: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let domain = domain.to_string();
        self.store
            .read(move |tx, _| store::events(tx, &domain, after_id, limit))
            .await
    }

    /// Up to `limit` of a destination's dead letters, newest first.
    pub async fn dead_letters(
        &self,
        destination: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let destination = destination.to_string();
        self.store
            .read(move |tx, _| store::dead_letters(tx, &destination, limit))
            .await
    }

    /// Up to `limit` orders the feed tracks in `domain` (the worklist as last polled), most
    /// recently changed first, with the document the mappings read.
    pub async fn tracked_documents(
        &self,
        domain: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let domain = domain.to_string();
        self.store
            .read(move |tx, _| store::tracked_documents(tx, &domain, limit))
            .await
    }

    /// One appointment's retained events, newest first, with their deliveries.
    pub async fn order_history(
        &self,
        domain: &str,
        appointment_id: &str,
        limit: usize,
    ) -> Result<Vec<EventHistory>, StoreError> {
        let (domain, id) = (domain.to_string(), appointment_id.to_string());
        self.store
            .read(move |tx, _| store::order_history(tx, &domain, &id, limit))
            .await
    }

    /// The oldest retained event id (0 when none): older cursors cannot be resumed.
    pub async fn first_event_id(&self) -> Result<i64, StoreError> {
        self.store.read(|tx, _| store::first_event(tx)).await
    }

    /// Follows the newest event id.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.latest.subscribe()
    }

    pub fn latest_event_id(&self) -> i64 {
        *self.latest.borrow()
    }

    /// Each destination's status, in configuration order.
    pub async fn destination_status(&self) -> Result<Vec<DestinationStatus>, StoreError> {
        let names: Vec<String> = self.routes.iter().map(|r| r.0.clone()).collect();
        self.store
            .read(move |tx, _| {
                names
                    .iter()
                    .map(|n| store::destination_status(tx, n))
                    .collect()
            })
            .await
    }

    /// Each listed domain's watch status.
    pub async fn watch_status(&self, domains: Vec<String>) -> Result<Vec<WatchStatus>, StoreError> {
        self.store
            .read(move |tx, _| domains.iter().map(|d| store::watch_status(tx, d)).collect())
            .await
    }

    /// Puts a destination's dead letters (of `domains`' orders) back in its queue, due now;
    /// returns how many. They are sent as they were, with their MSH-10.
    pub async fn requeue(
        &self,
        destination: &str,
        domains: Vec<String>,
    ) -> Result<usize, StoreError> {
        let destination = destination.to_string();
        let n = self
            .store
            .write(move |tx, now| store::requeue(tx, &destination, &domains, now))
            .await?;
        self.queued.notify_waiters();
        Ok(n)
    }

    /// Deletes events older than `older_than_ms` whose deliveries have all settled.
    pub async fn prune(&self, older_than_ms: i64) -> Result<usize, StoreError> {
        self.store
            .write(move |tx, _| store::prune(tx, older_than_ms))
            .await
    }
}

/// Prunes old events hourly (and once at start) until shutdown.
pub async fn prune_periodically(
    feed: Arc<Feed>,
    retention_hours: u64,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let cutoff = crate::store::now_ms() - (retention_hours * 3_600_000) as i64;
        match feed.prune(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "pruned old feed events"),
            Err(e) => tracing::warn!(error = %e, "feed event pruning failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
