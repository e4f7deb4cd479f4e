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
//!   with one delivery per destination in the same transaction, through [`FeedStore`]
//!   (SQLite in `sqlite.rs`, PostgreSQL in `postgres.rs`). So a restart resumes where it
//!   stopped and nothing found is lost.
//! - Each destination ([`deliver`]) drains its own durable queue: one message at a time on
//!   one connection, in order per patient (or appointment), retrying with back-off; a
//!   stuck order holds back only the orders that share its key unless `ordering = "strict"`.
//!
//! When the mapping set changes, [`resend`] compares each tracked order's message now with
//! the last one sent and sends again, as XO, those that differ.
//!
//! Delivery is at least once: a crash between a consumer's ACK and its recording resends
//! that message with the same MSH-10, which HL7 receivers use to discard duplicates.
//!
//! With several replicas (PostgreSQL), one replica polls each domain and one drains each
//! destination ([`crate::store::leader`]); the watch state and delivery outcomes are written
//! only under that lease, checked in the same transaction. Events are numbered in commit
//! order, so a `WatchOrders` cursor never skips one that commits late.

pub mod deliver;
mod postgres;
pub mod resend;
mod settings;
mod sqlite;
pub mod watcher;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Notify, watch};

pub use settings::{
    AckPolicy, DestinationKind, DestinationSettings, DestinationTls, FeedSettings, FirstRun,
    OnMappingChange, OnRemoved, Ordering, SettingsError,
};

use crate::store::migrate::Component;
use crate::store::{Database, Signal, StoreError};

/// The feed's tables on each backend.
pub static SCHEMA: Component = Component {
    name: "feed",
    copy: &[
        ("feed_watch", "feed_watch"),
        ("feed_orders", "feed_orders"),
        ("feed_events", "feed_events"),
        ("feed_deliveries", "feed_deliveries"),
        ("feed_destinations", "feed_destinations"),
    ],
    sqlite: sqlite::MIGRATIONS,
    postgres: postgres::MIGRATIONS,
};

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

    pub(crate) fn parse(s: &str) -> EventKind {
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

/// An order taken into the watch state without an event: a first-run baseline, or a new
/// fingerprint that changes nothing consumers were sent (the mappings now read another
/// field, not the order's data).
#[derive(Debug, Clone)]
pub struct Baseline {
    pub appointment_id: String,
    pub patient_id: Option<String>,
    pub fingerprint: String,
    pub document: Vec<u8>,
    /// The ORM consumers are taken to hold (a first-run baseline's, rendered then); `None`
    /// keeps the one stored.
    pub message: Option<(EventKind, String)>,
}

/// An order a domain's watch knows, with the last ORM its consumers were sent.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub appointment_id: String,
    pub patient_id: Option<String>,
    pub fingerprint: String,
    pub document: Vec<u8>,
    /// The last message sent (or taken as held, for a baseline) and its event kind; `None`
    /// for orders recorded before messages were kept, or a baseline that did not map.
    pub message: Option<(EventKind, String)>,
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
    /// Try again after `delay` (by the store's clock).
    Retry { delay: Duration, reason: String },
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

/// The feed's storage: one implementation per backend. Watch-state writes (`record`,
/// `polled`) belong to the domain's poll leader and delivery writes (`settle`,
/// `destination_error`) to the destination's leader; PostgreSQL refuses them from a replica
/// that does not hold that lease ([`StoreError::NotLeader`]).
#[async_trait::async_trait]
pub trait FeedStore: Send + Sync {
    /// The newest event id (0 when none).
    async fn latest_event(&self) -> Result<i64, StoreError>;
    /// The oldest retained event id (0 when none).
    async fn first_event(&self) -> Result<i64, StoreError>;
    /// Fingerprints of the orders a domain's watch knows, by appointment id.
    async fn fingerprints(&self, domain: &str) -> Result<HashMap<String, String>, StoreError>;
    /// The last document of a tracked order.
    async fn document(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError>;
    /// Whether the domain's first complete poll has been recorded.
    async fn baselined(&self, domain: &str) -> Result<bool, StoreError>;
    /// The orders a domain's watch knows (only `appointment_id`, when given), by id.
    async fn tracked(
        &self,
        domain: &str,
        appointment_id: Option<&str>,
    ) -> Result<Vec<Tracked>, StoreError>;
    /// The mapping-set version the domain's tracked orders were last compared against.
    async fn reconciled_version(&self, domain: &str) -> Result<Option<String>, StoreError>;
    /// Notes that version (a watch-state write: the poll leader's).
    async fn set_reconciled_version(&self, domain: &str, version: &str) -> Result<(), StoreError>;
    /// Stores events (each with a delivery per route), baseline rows, and forgets
    /// `removed` orders, in one transaction. Returns the last event id written.
    async fn record(
        &self,
        domain: &str,
        events: Vec<NewEvent>,
        baseline: Vec<Baseline>,
        removed: Vec<String>,
        routes: Vec<(String, Ordering)>,
    ) -> Result<Option<i64>, StoreError>;
    /// Notes a finished poll (complete or failed) of a domain.
    async fn polled(&self, domain: &str, error: Option<String>) -> Result<(), StoreError>;
    /// Deliveries of `destination` due now, oldest first: the first pending one of each
    /// ordering key whose time has come (strict: one key for the whole destination).
    async fn due(
        &self,
        destination: &str,
        strict: bool,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, StoreError>;
    /// How long until the destination's next pending delivery falls due (zero when one is
    /// due); `None` when none is pending.
    async fn next_due_in(&self, destination: &str) -> Result<Option<Duration>, StoreError>;
    /// Records how deliveries ended, in one transaction.
    async fn settle(
        &self,
        destination: &str,
        outcomes: Vec<(i64, Outcome)>,
    ) -> Result<(), StoreError>;
    /// Notes a failure that is not any one delivery's.
    async fn destination_error(&self, destination: &str, error: String) -> Result<(), StoreError>;
    /// Clears the destination's last error: a round delivered without one.
    async fn destination_recovered(&self, destination: &str) -> Result<(), StoreError>;
    /// Events of `domain` after `after_id`, oldest first.
    async fn events(
        &self,
        domain: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;
    /// The named destinations' queues and last contact, in the order given.
    async fn destination_status(
        &self,
        names: &[String],
    ) -> Result<Vec<DestinationStatus>, StoreError>;
    /// The listed domains' watches.
    async fn watch_status(&self, domains: &[String]) -> Result<Vec<WatchStatus>, StoreError>;
    /// Puts a destination's dead letters of `domains` back in its queue, due now.
    async fn requeue(&self, destination: &str, domains: &[String]) -> Result<usize, StoreError>;
    /// Deletes events older than `older_than` none of whose deliveries is pending.
    async fn prune(&self, older_than: Duration) -> Result<usize, StoreError>;
    /// Up to `limit` of a destination's dead letters (of every domain), newest first.
    async fn dead_letters(
        &self,
        destination: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError>;
    /// Up to `limit` orders tracked in `domain`, most recently changed first: appointment
    /// id and the document the mappings read.
    async fn tracked_documents(
        &self,
        domain: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Up to `limit` of one appointment's retained events, newest first, each with its
    /// deliveries ordered by destination.
    async fn order_history(
        &self,
        domain: &str,
        appointment_id: &str,
        limit: usize,
    ) -> Result<Vec<EventHistory>, StoreError>;
}

/// The feed's handle on its part of the store; shared by the watcher, the destinations
/// and the gRPC API.
pub struct Feed {
    store: Box<dyn FeedStore>,
    /// Destinations and the domains each takes.
    routes: Vec<(String, Vec<String>, Ordering)>,
    /// The newest event id, for `WatchOrders` streams waiting for more.
    latest: watch::Sender<i64>,
    /// Wakes destinations when deliveries were queued or released.
    pub(crate) queued: Notify,
    /// The order mapping that renders the feed's messages.
    mapping: String,
    on_mapping_change: OnMappingChange,
    /// One per domain: a poll and a resend of the domain never interleave, so a resend
    /// never records an older document after a poll recorded a newer one.
    watch_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// How often a replica looks for events other replicas recorded, when no notification came.
const LATEST_POLL: Duration = Duration::from_secs(1);

impl Feed {
    /// The feed in `db`, routing events to the configured destinations. On PostgreSQL it
    /// follows what other replicas record.
    pub async fn open(db: &Database, settings: &FeedSettings) -> Result<Arc<Feed>, StoreError> {
        let store: Box<dyn FeedStore> = match db {
            Database::Sqlite(s) => Box::new(sqlite::SqliteFeed::new(s.clone())),
            Database::Postgres(p) => Box::new(postgres::PgFeed::new(p.clone())),
        };
        let latest = store.latest_event().await?;
        let routes = settings
            .destinations
            .iter()
            .map(|d| (d.name.clone(), d.domains.clone(), d.ordering))
            .collect();
        let feed = Arc::new(Feed {
            store,
            routes,
            latest: watch::channel(latest).0,
            queued: Notify::new(),
            mapping: settings.mapping.clone(),
            on_mapping_change: settings.on_mapping_change,
            watch_locks: Default::default(),
        });
        if let Database::Postgres(_) = db {
            tokio::spawn(follow(Arc::downgrade(&feed), db.subscribe()));
        }
        Ok(feed)
    }

    /// Fingerprints of the orders a domain's watch knows, by appointment id.
    pub async fn fingerprints(&self, domain: &str) -> Result<HashMap<String, String>, StoreError> {
        self.store.fingerprints(domain).await
    }

    /// The last document of a tracked order (to map its removal).
    pub async fn document(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.document(domain, appointment_id).await
    }

    /// Whether the domain's first complete poll has been recorded.
    pub async fn baselined(&self, domain: &str) -> Result<bool, StoreError> {
        self.store.baselined(domain).await
    }

    /// The orders a domain's watch knows (only `appointment_id`, when given).
    pub async fn tracked(
        &self,
        domain: &str,
        appointment_id: Option<&str>,
    ) -> Result<Vec<Tracked>, StoreError> {
        self.store.tracked(domain, appointment_id).await
    }

    /// The order mapping that renders the feed's messages.
    pub fn mapping(&self) -> &str {
        &self.mapping
    }

    /// What a new mapping-set version does.
    pub fn on_mapping_change(&self) -> OnMappingChange {
        self.on_mapping_change
    }

    /// Held while a domain's watch state is read and written (a poll, a resend).
    pub async fn lock_watch(&self, domain: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .watch_locks
            .lock()
            .expect("watch locks")
            .entry(domain.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
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
        let queued = !events.is_empty() && !routes.is_empty();
        let last = self
            .store
            .record(domain, events, baseline, removed, routes)
            .await?;
        if let Some(last) = last {
            self.saw_event(last);
        }
        if queued {
            self.queued.notify_waiters();
        }
        Ok(())
    }

    /// Notes a finished poll (complete or failed) of a domain.
    pub async fn polled(&self, domain: &str, error: Option<String>) -> Result<(), StoreError> {
        self.store.polled(domain, error).await
    }

    /// Up to `limit` deliveries of a destination due now (see [`FeedStore::due`]).
    pub async fn due(
        &self,
        destination: &str,
        strict: bool,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        self.store.due(destination, strict, limit).await
    }

    /// How long until the destination's next delivery falls due, if any is pending.
    pub async fn next_due_in(&self, destination: &str) -> Result<Option<Duration>, StoreError> {
        self.store.next_due_in(destination).await
    }

    /// Records how deliveries ended, in one transaction.
    pub async fn settle(
        &self,
        destination: &str,
        outcomes: Vec<(i64, Outcome)>,
    ) -> Result<(), StoreError> {
        self.store.settle(destination, outcomes).await
    }

    /// Notes a failure that is not any one delivery's (the consumer is unreachable).
    pub async fn destination_error(&self, destination: &str, error: String) {
        let _ = self.store.destination_error(destination, error).await;
    }

    /// Clears the destination's last error after a round that delivered without one.
    pub async fn destination_recovered(&self, destination: &str) {
        let _ = self.store.destination_recovered(destination).await;
    }

    /// Events of `domain` after `after_id`, oldest first.
    pub async fn events(
        &self,
        domain: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.store.events(domain, after_id, limit).await
    }

    /// Up to `limit` of a destination's dead letters, newest first.
    pub async fn dead_letters(
        &self,
        destination: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.store.dead_letters(destination, limit).await
    }

    /// Up to `limit` orders the feed tracks in `domain` (the worklist as last polled), most
    /// recently changed first, with the document the mappings read.
    pub async fn tracked_documents(
        &self,
        domain: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.store.tracked_documents(domain, limit).await
    }

    /// One appointment's retained events, newest first, with their deliveries.
    pub async fn order_history(
        &self,
        domain: &str,
        appointment_id: &str,
        limit: usize,
    ) -> Result<Vec<EventHistory>, StoreError> {
        self.store
            .order_history(domain, appointment_id, limit)
            .await
    }

    /// The oldest retained event id (0 when none): older cursors cannot be resumed.
    pub async fn first_event_id(&self) -> Result<i64, StoreError> {
        self.store.first_event().await
    }

    /// Follows the newest event id.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.latest.subscribe()
    }

    pub fn latest_event_id(&self) -> i64 {
        *self.latest.borrow()
    }

    fn saw_event(&self, id: i64) {
        self.latest.send_if_modified(|latest| {
            let newer = id > *latest;
            if newer {
                *latest = id;
            }
            newer
        });
    }

    /// Each destination's status, in configuration order.
    pub async fn destination_status(&self) -> Result<Vec<DestinationStatus>, StoreError> {
        let names: Vec<String> = self.routes.iter().map(|r| r.0.clone()).collect();
        self.store.destination_status(&names).await
    }

    /// One destination's status.
    pub async fn destination_status_of(&self, name: &str) -> Result<DestinationStatus, StoreError> {
        let mut status = self.store.destination_status(&[name.to_string()]).await?;
        Ok(status.pop().unwrap_or_default())
    }

    /// Each listed domain's watch status.
    pub async fn watch_status(&self, domains: Vec<String>) -> Result<Vec<WatchStatus>, StoreError> {
        self.store.watch_status(&domains).await
    }

    /// Puts a destination's dead letters (of `domains`' orders) back in its queue, due now;
    /// returns how many. They are sent as they were, with their MSH-10.
    pub async fn requeue(
        &self,
        destination: &str,
        domains: Vec<String>,
    ) -> Result<usize, StoreError> {
        let n = self.store.requeue(destination, &domains).await?;
        self.queued.notify_waiters();
        Ok(n)
    }

    /// Deletes events older than `older_than` whose deliveries have all settled.
    pub async fn prune(&self, older_than: Duration) -> Result<usize, StoreError> {
        self.store.prune(older_than).await
    }
}

/// Follows what other replicas record (PostgreSQL): new events wake `WatchOrders` streams
/// and destinations; requeued deliveries wake destinations. Notifications only wake; every
/// [`LATEST_POLL`] the newest event id is read again in case one was lost.
async fn follow(feed: Weak<Feed>, mut signals: tokio::sync::broadcast::Receiver<Signal>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut poll = tokio::time::interval(LATEST_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let signal = tokio::select! {
            s = signals.recv() => Some(s),
            _ = poll.tick() => None,
        };
        let Some(feed) = feed.upgrade() else {
            return;
        };
        match signal {
            Some(Ok(Signal::Notification { channel, payload }))
                if channel == crate::store::postgres::FEED_CHANNEL =>
            {
                if let Some(id) = payload
                    .strip_prefix("event:")
                    .and_then(|id| id.parse().ok())
                {
                    feed.saw_event(id);
                }
                feed.queued.notify_waiters();
            }
            Some(Ok(Signal::Notification { .. })) => {}
            Some(Ok(Signal::Resync)) | Some(Err(RecvError::Lagged(_))) => {
                if let Ok(latest) = feed.store.latest_event().await {
                    feed.saw_event(latest);
                }
                feed.queued.notify_waiters();
            }
            None => {
                if let Ok(latest) = feed.store.latest_event().await {
                    feed.saw_event(latest);
                }
            }
            Some(Err(RecvError::Closed)) => return,
        }
    }
}
