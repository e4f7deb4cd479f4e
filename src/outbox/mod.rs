//! The durable outbox: every result the bridge accepts is committed here before any
//! acknowledgement promises it, and stays until QUBS has it or an operator purges it.
//!
//! The outbox talks to its storage through [`OutboxStore`] (domain types in and out), with
//! one implementation per backend of the [`crate::store`]: `sqlite.rs` (the embedded file,
//! one process) and `postgres.rs` (several replicas claiming work from one database). Each
//! owns its tables and migrations ([`SCHEMA`]).
//!
//! Times are Unix milliseconds of the store's clock. A result is `pending` until it is
//! `submitted` (QUBS answered 201) or `dead` (a permanent refusal, or the retry horizon
//! passed): see [`crate::results::worker`]. A pending result is handed to one worker at a
//! time: [`Outbox::claim`] marks it as this replica's (with a lease on PostgreSQL, so that
//! the work of a replica that died is taken over once the lease runs out), and settling it
//! or scheduling a retry ends the claim.

mod postgres;
mod sqlite;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use crate::store::migrate::Component;
use crate::store::{Database, Signal, StoreMetrics};
pub use crate::store::{StoreError as OutboxError, now_ms};

/// Where an input came from; decides how the worker turns the stored body into a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An ORU^R01 (ER7); `group` picks the ORDER_OBSERVATION group.
    Hl7,
    /// A FHIR DiagnosticReport (JSON).
    Fhir,
    /// A [`crate::domain::ReportSubmission`] as JSON.
    Report,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Hl7 => "hl7",
            Source::Fhir => "fhir",
            Source::Report => "report",
        }
    }

    fn parse(s: &str) -> Source {
        match s {
            "hl7" => Source::Hl7,
            "fhir" => Source::Fhir,
            _ => Source::Report,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Submitted,
    Dead,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Submitted => "submitted",
            State::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> State {
        match s {
            "submitted" => State::Submitted,
            "dead" => State::Dead,
            _ => State::Pending,
        }
    }
}

/// A file that goes with a report (a PDF from an OBX ED).
#[derive(Clone)]
pub struct Attachment {
    pub file_name: String,
    pub content_type: String,
    pub content: Vec<u8>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("file_name", &self.file_name)
            .field("content_type", &self.content_type)
            .field("bytes", &self.content.len())
            .finish()
    }
}

/// One report to submit, as intake found it.
#[derive(Debug, Clone)]
pub struct NewResult {
    pub key: String,
    pub domain: String,
    pub appointment_id: String,
    /// Which ORDER_OBSERVATION group (or FHIR submission), from 0.
    pub group: u32,
    /// `preliminary` or `final`.
    pub report_status: String,
    pub attachments: Vec<Attachment>,
}

/// One inbound message and the results it holds, stored together or not at all.
#[derive(Clone)]
pub struct NewMessage {
    pub source: Source,
    /// MSH-10, the FHIR id, or `report`.
    pub source_id: String,
    pub body: Vec<u8>,
    pub results: Vec<NewResult>,
    /// Someone waits for these results to settle (ack mode `after_submit`, or an enhanced
    /// mode application ACK): the replica that settles one tells the others.
    pub awaited: bool,
}

/// What [`Outbox::admit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Newly stored, one id per result.
    Stored { ids: Vec<i64> },
    /// Already stored: a retransmission. Nothing new was written.
    Duplicate { ids: Vec<i64> },
    /// Refused: result `index` is preliminary, and a final result for its appointment is
    /// already stored or submitted. A preliminary never overwrites a final.
    PreliminaryAfterFinal { index: usize, final_id: i64 },
}

/// QUBS's answer to a submitted report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub report_guid: String,
    pub report_status: Option<String>,
    pub reported_at_utc: Option<String>,
}

/// How a result ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    Submitted(Receipt),
    Dead {
        /// Machine-readable, e.g. `not_found`, `rejected`, `horizon`.
        kind: String,
        /// For operators; names ids and fields, never patient data.
        reason: String,
        qubs_request_id: Option<String>,
    },
}

/// A stored result, as operators and acknowledgements see it (no report content).
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: i64,
    pub idempotency_key: String,
    pub domain: String,
    pub appointment_id: String,
    pub source: Source,
    pub source_id: String,
    pub group: u32,
    pub report_status: String,
    pub state: State,
    pub attempts: u32,
    pub received_at_ms: i64,
    pub first_attempt_at_ms: Option<i64>,
    pub next_attempt_at_ms: i64,
    pub updated_at_ms: i64,
    pub last_error: Option<String>,
    pub error_kind: Option<String>,
    pub qubs_request_id: Option<String>,
    pub receipt: Option<Receipt>,
    pub attachments: u32,
}

impl Entry {
    /// The outcome, once there is one.
    pub fn settled(&self) -> Option<Settled> {
        match self.state {
            State::Pending => None,
            State::Submitted => Some(Settled::Submitted(self.receipt.clone().unwrap_or(
                Receipt {
                    report_guid: String::new(),
                    report_status: None,
                    reported_at_utc: None,
                },
            ))),
            State::Dead => Some(Settled::Dead {
                kind: self.error_kind.clone().unwrap_or_else(|| "dead".into()),
                reason: self.last_error.clone().unwrap_or_default(),
                qubs_request_id: self.qubs_request_id.clone(),
            }),
        }
    }
}

/// A result claimed for submission, with what the worker needs to submit it.
#[derive(Debug, Clone)]
pub struct Due {
    pub entry: Entry,
    pub source: Source,
    pub body: Vec<u8>,
    pub attachments: Vec<Attachment>,
    /// The store's clock when it was claimed.
    pub claimed_at_ms: i64,
}

/// Which entries to list.
#[derive(Debug, Clone, Default)]
pub struct EntryFilter {
    pub state: Option<State>,
    /// Empty: all domains.
    pub domains: Vec<String>,
    pub appointment_id: Option<String>,
    /// The input's own id: an ORU's MSH-10, a DiagnosticReport's id.
    pub source_id: Option<String>,
    /// Entries with a larger id only (paging).
    pub after_id: i64,
    /// Entries with a smaller id only, when set (paging newest first).
    pub before_id: Option<i64>,
    /// The newest entries first (the console's recent results); oldest first otherwise.
    pub newest_first: bool,
    pub limit: usize,
}

/// Which dead letters [`Outbox::retry`] puts back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetters {
    /// These entries (those not dead are left as they are).
    Ids(Vec<i64>),
    /// Every dead letter.
    All,
}

/// Why [`Outbox::retry`] did nothing.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error(transparent)]
    Storage(#[from] OutboxError),
    /// An entry asked for belongs to a domain the caller may not use.
    #[error("outbox entry {id} belongs to domain `{domain}`")]
    OtherDomain { id: i64, domain: String },
}

/// Counts for metrics and `/readyz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub pending: u64,
    /// Counted only when asked for: it grows until purged, and counting it is not free.
    pub submitted: Option<u64>,
    pub dead: u64,
    pub oldest_pending_received_at_ms: Option<i64>,
}

impl Stats {
    /// How long the oldest pending result has waited at `now_ms`; 0 when none waits.
    pub fn oldest_pending_age_secs(&self, now_ms: i64) -> f64 {
        self.oldest_pending_received_at_ms
            .map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0)
    }
}

/// The outbox's storage: one implementation per backend.
#[async_trait::async_trait]
pub trait OutboxStore: Send + Sync {
    /// Stores a message's results durably (see [`Admission`]): when this returns `Stored`,
    /// they are committed.
    async fn admit(&self, message: NewMessage) -> Result<Admission, OutboxError>;

    /// Claims up to `limit` results due now for this process: oldest first, at most one per
    /// appointment, never one behind an older unsettled result of its appointment, never one
    /// another worker holds. A claim lasts until the result is settled, scheduled again, or
    /// released — or, on PostgreSQL, until its lease runs out because this process died.
    async fn claim(&self, limit: usize) -> Result<Vec<Due>, OutboxError>;

    /// Gives a claim back without an outcome (the attempt ended unexpectedly).
    async fn release(&self, id: i64);

    /// Records how a claimed result ended. A claim that was lost meanwhile (another
    /// replica took the result over) records nothing.
    async fn settle(&self, id: i64, settled: &Settled) -> Result<(), OutboxError>;

    /// Schedules another attempt `delay` from now (by the store's clock).
    async fn retry_later(
        &self,
        id: i64,
        delay: Duration,
        reason: &str,
        qubs_request_id: Option<&str>,
    ) -> Result<(), OutboxError>;

    /// The entries among `ids` that exist, in the order asked.
    async fn entries(&self, ids: &[i64]) -> Result<Vec<Entry>, OutboxError>;

    async fn list(&self, filter: &EntryFilter) -> Result<Vec<Entry>, OutboxError>;

    /// The message result `id` came in (its source and body as received), if stored.
    async fn message(&self, id: i64) -> Result<Option<(Source, Vec<u8>)>, OutboxError>;

    /// Puts dead letters back in the queue, due now; returns how many were dead.
    async fn requeue(&self, ids: &[i64]) -> Result<usize, OutboxError>;

    /// Deletes `submitted` or `dead` results last updated more than `older_than` ago (of
    /// `domains`, or all when empty), and messages left without results.
    async fn purge(
        &self,
        state: State,
        older_than: Duration,
        domains: &[String],
    ) -> Result<usize, OutboxError>;

    /// Counts by state; `with_submitted` also counts the settled history (slower).
    async fn stats(&self, with_submitted: bool) -> Result<Stats, OutboxError>;
}

/// The outbox's tables on each backend.
pub static SCHEMA: Component = Component {
    name: "outbox",
    copy: &[
        ("messages", "outbox_messages"),
        ("results", "outbox_results"),
        ("attachments", "outbox_attachments"),
    ],
    sqlite: sqlite::MIGRATIONS,
    postgres: postgres::MIGRATIONS,
};

/// The outbox handle; cheap to share behind an `Arc`.
pub struct Outbox {
    store: Box<dyn OutboxStore>,
    metrics: Arc<StoreMetrics>,
    /// Wakes the worker when something new is due.
    pub(crate) wake: Notify,
    /// Callers waiting for a result to settle (ack mode `after_submit`), by result id.
    waiters: Mutex<HashMap<i64, Vec<oneshot::Sender<Settled>>>>,
}

/// How often waiters look at the store themselves when no notification came.
const WAITER_POLL: Duration = Duration::from_secs(1);

impl Outbox {
    /// The outbox in `db`. On PostgreSQL it follows the other replicas' changes.
    pub fn new(db: &Database, metrics: Arc<StoreMetrics>) -> Arc<Outbox> {
        let store: Box<dyn OutboxStore> = match db {
            Database::Sqlite(s) => Box::new(sqlite::SqliteOutbox::new(s.clone())),
            Database::Postgres(p) => Box::new(postgres::PgOutbox::new(p.clone())),
        };
        let outbox = Arc::new(Outbox {
            store,
            metrics,
            wake: Notify::new(),
            waiters: Mutex::new(HashMap::new()),
        });
        if let Database::Postgres(_) = db {
            tokio::spawn(follow(Arc::downgrade(&outbox), db.subscribe()));
        }
        outbox
    }

    /// Stores a message's results durably (see [`Admission`]). When this returns `Stored`,
    /// the results are committed.
    pub async fn admit(&self, message: NewMessage) -> Result<Admission, OutboxError> {
        let admission = self.store.admit(message).await?;
        if matches!(admission, Admission::Stored { .. }) {
            self.wake.notify_one();
        }
        Ok(admission)
    }

    /// Claims up to `limit` due results for this process (see [`OutboxStore::claim`]).
    pub async fn claim(&self, limit: usize) -> Result<Vec<Due>, OutboxError> {
        let started = Instant::now();
        let claimed = self.store.claim(limit).await;
        self.metrics
            .claim_seconds
            .observe(started.elapsed().as_secs_f64());
        claimed
    }

    /// Gives a claim back without an outcome.
    pub async fn release(&self, id: i64) {
        self.store.release(id).await;
        self.wake.notify_one();
    }

    /// Records how a result ended and tells whoever waits for it.
    pub async fn settle(&self, id: i64, settled: Settled) -> Result<(), OutboxError> {
        self.store.settle(id, &settled).await?;
        self.answer_waiters(id, settled);
        // A settled result may unblock the next one of its appointment.
        self.wake.notify_one();
        Ok(())
    }

    /// Schedules another attempt `delay` from now, by the store's clock.
    pub async fn retry_later(
        &self,
        id: i64,
        delay: Duration,
        reason: String,
        qubs_request_id: Option<String>,
    ) -> Result<(), OutboxError> {
        self.store
            .retry_later(id, delay, &reason, qubs_request_id.as_deref())
            .await
    }

    pub async fn entries(&self, ids: Vec<i64>) -> Result<Vec<Entry>, OutboxError> {
        self.store.entries(&ids).await
    }

    pub async fn entry(&self, id: i64) -> Result<Option<Entry>, OutboxError> {
        Ok(self.entries(vec![id]).await?.pop())
    }

    pub async fn list(&self, filter: EntryFilter) -> Result<Vec<Entry>, OutboxError> {
        self.store.list(&filter).await
    }

    /// The message result `id` came in, as received (an ORU^R01, a DiagnosticReport, a
    /// report submission): patient data, for the analyst's playground; never log it.
    pub async fn message(&self, id: i64) -> Result<Option<(Source, Vec<u8>)>, OutboxError> {
        self.store.message(id).await
    }

    /// Puts dead letters back in the queue; returns how many were dead.
    pub async fn requeue(&self, ids: Vec<i64>) -> Result<usize, OutboxError> {
        let n = self.store.requeue(&ids).await?;
        self.wake.notify_one();
        Ok(n)
    }

    /// Puts dead letters back in the queue: those among `which`'s ids, or every dead letter,
    /// of `domains` (empty: all). The one implementation behind `outbox retry`, gRPC
    /// `RetryOutbox` and the console. Returns how many were dead and are queued again.
    pub async fn retry(&self, which: DeadLetters, domains: &[String]) -> Result<usize, RetryError> {
        let mut ids = Vec::new();
        match which {
            DeadLetters::All => {
                let mut after_id = 0;
                loop {
                    let page = self
                        .list(EntryFilter {
                            state: Some(State::Dead),
                            domains: domains.to_vec(),
                            after_id,
                            limit: 1000,
                            ..Default::default()
                        })
                        .await?;
                    let Some(last) = page.last() else { break };
                    after_id = last.id;
                    ids.extend(page.iter().map(|e| e.id));
                }
            }
            DeadLetters::Ids(wanted) => {
                for e in self.entries(wanted).await? {
                    if !domains.is_empty() && !domains.contains(&e.domain) {
                        return Err(RetryError::OtherDomain {
                            id: e.id,
                            domain: e.domain,
                        });
                    }
                    ids.push(e.id);
                }
            }
        }
        Ok(self.requeue(ids).await?)
    }

    /// Deletes `submitted` or `dead` results last updated more than `older_than` ago.
    pub async fn purge(
        &self,
        state: State,
        older_than: Duration,
        domains: Vec<String>,
    ) -> Result<usize, OutboxError> {
        if state == State::Pending {
            return Ok(0);
        }
        self.store.purge(state, older_than, &domains).await
    }

    /// Counts by state; `with_submitted` also counts the settled history (slower).
    pub async fn stats(&self, with_submitted: bool) -> Result<Stats, OutboxError> {
        self.store.stats(with_submitted).await
    }

    /// Waits until result `id` settles, for at most `limit`. `None` when it has not.
    pub async fn wait_settled(&self, id: i64, limit: Duration) -> Option<Settled> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters")
            .entry(id)
            .or_default()
            .push(tx);
        // It may have settled before the waiter was registered.
        if let Ok(Some(entry)) = self.entry(id).await
            && let Some(settled) = entry.settled()
        {
            // Close this waiter first, so that it is among those forgotten.
            drop(rx);
            self.forget_waiters(id);
            return Some(settled);
        }
        let outcome = tokio::time::timeout(limit, rx)
            .await
            .ok()
            .and_then(Result::ok);
        if outcome.is_none() {
            self.forget_waiters(id);
        }
        outcome
    }

    /// Whether anyone waits for results to settle (tests).
    pub fn has_waiters(&self) -> bool {
        !self.waiters.lock().expect("waiters").is_empty()
    }

    fn answer_waiters(&self, id: i64, settled: Settled) {
        let waiting = self.waiters.lock().expect("waiters").remove(&id);
        for w in waiting.into_iter().flatten() {
            let _ = w.send(settled.clone());
        }
    }

    fn forget_waiters(&self, id: i64) {
        let mut waiters = self.waiters.lock().expect("waiters");
        if let Some(list) = waiters.get_mut(&id) {
            list.retain(|w| !w.is_closed());
            if list.is_empty() {
                waiters.remove(&id);
            }
        }
    }

    /// Answers the waiters among `ids` whose results have settled (in the store).
    async fn look_again(&self, ids: Vec<i64>) {
        if ids.is_empty() {
            return;
        }
        if let Ok(entries) = self.entries(ids).await {
            for e in entries {
                if let Some(settled) = e.settled() {
                    self.answer_waiters(e.id, settled);
                }
            }
        }
    }

    fn waited_ids(&self) -> Vec<i64> {
        self.waiters
            .lock()
            .expect("waiters")
            .keys()
            .copied()
            .collect()
    }
}

/// Follows what other replicas do (PostgreSQL): a result settled elsewhere answers the
/// waiters here; new or requeued work wakes the worker. Notifications only wake: the store
/// decides. Every [`WAITER_POLL`] the waiters look at the store themselves, in case a
/// notification was lost.
async fn follow(outbox: Weak<Outbox>, mut signals: tokio::sync::broadcast::Receiver<Signal>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut poll = tokio::time::interval(WAITER_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let signal = tokio::select! {
            s = signals.recv() => Some(s),
            _ = poll.tick() => None,
        };
        let Some(outbox) = outbox.upgrade() else {
            return;
        };
        match signal {
            Some(Ok(Signal::Notification { channel, payload }))
                if channel == crate::store::postgres::OUTBOX_CHANNEL =>
            {
                match payload
                    .strip_prefix("settled:")
                    .and_then(|id| id.parse().ok())
                {
                    Some(id) => {
                        if outbox.waiters.lock().expect("waiters").contains_key(&id) {
                            outbox.look_again(vec![id]).await;
                        }
                    }
                    None => outbox.wake.notify_one(),
                }
            }
            Some(Ok(Signal::Notification { .. })) => {}
            Some(Ok(Signal::Resync)) | Some(Err(RecvError::Lagged(_))) | None => {
                let ids = outbox.waited_ids();
                outbox.look_again(ids).await;
                outbox.wake.notify_one();
            }
            Some(Err(RecvError::Closed)) => return,
        }
    }
}
