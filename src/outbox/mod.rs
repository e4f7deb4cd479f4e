//! The durable outbox: every result the bridge accepts is committed to disk here before any
//! acknowledgement promises it, and stays until QUBS has it or an operator purges it.
//!
//! It lives in the embedded [`Store`] (see there for durability and group commit).
//! **Why SQLite** (rusqlite, with SQLite compiled in, so nothing to install): one file that
//! survives `kill -9` and power loss, secondary indexes for the queries the worker needs
//! (due results, oldest unsettled result per appointment) and the operators need (by state,
//! domain, appointment), and a file any operator can open with the `sqlite3` shell. redb
//! would have served the durability, but every secondary index would be hand-maintained
//! tables.
//!
//! Times are Unix milliseconds. A result is `pending` until it is `submitted` (QUBS answered
//! 201) or `dead` (a permanent refusal, or the retry horizon passed): see
//! [`crate::results::worker`].

mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use crate::store::Store;
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

/// A result due for submission, with what the worker needs to submit it.
#[derive(Debug, Clone)]
pub struct Due {
    pub entry: Entry,
    pub source: Source,
    pub body: Vec<u8>,
    pub attachments: Vec<Attachment>,
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

/// The outbox's tables, created by [`crate::store::Store::open`].
pub const SCHEMA: &str = store::SCHEMA;

/// The outbox handle; cheap to share behind an `Arc`.
pub struct Outbox {
    store: Arc<Store>,
    /// Wakes the worker when something new is due.
    pub(crate) wake: Notify,
    /// Callers waiting for a result to settle (ack mode `after_submit`), by result id.
    waiters: Mutex<HashMap<i64, Vec<oneshot::Sender<Settled>>>>,
}

impl Outbox {
    /// The outbox in `store`.
    pub fn new(store: Arc<Store>) -> Arc<Outbox> {
        Arc::new(Outbox {
            store,
            wake: Notify::new(),
            waiters: Mutex::new(HashMap::new()),
        })
    }

    /// Opens a store of its own at `path` (tools and tests; the service shares one store).
    pub fn open(path: &Path) -> Result<Arc<Outbox>, OutboxError> {
        Ok(Outbox::new(Store::open(path)?))
    }

    /// Stores a message's results durably (see [`Admission`]). When this returns `Stored`,
    /// the results are on disk.
    pub async fn admit(&self, message: NewMessage) -> Result<Admission, OutboxError> {
        let admission = self
            .store
            .write(move |tx, now| store::admit(tx, &message, now))
            .await?;
        if matches!(admission, Admission::Stored { .. }) {
            self.wake.notify_one();
        }
        Ok(admission)
    }

    /// Results due now (see `store::due`), skipping `busy` ones already being submitted.
    pub async fn due(&self, limit: usize, busy: Vec<i64>) -> Result<Vec<Due>, OutboxError> {
        self.store
            .read(move |tx, now| store::due(tx, now, limit, &busy))
            .await
    }

    /// Records how a result ended and tells whoever waits for it.
    pub async fn settle(&self, id: i64, settled: Settled) -> Result<(), OutboxError> {
        let stored = settled.clone();
        self.store
            .write(move |tx, now| store::settle(tx, id, &stored, now))
            .await?;
        let waiting = self.waiters.lock().expect("waiters").remove(&id);
        for w in waiting.into_iter().flatten() {
            let _ = w.send(settled.clone());
        }
        // A settled result may unblock the next one of its appointment.
        self.wake.notify_one();
        Ok(())
    }

    /// Schedules another attempt.
    pub async fn retry_later(
        &self,
        id: i64,
        next_at_ms: i64,
        reason: String,
        qubs_request_id: Option<String>,
    ) -> Result<(), OutboxError> {
        self.store
            .write(move |tx, now| {
                store::retry_later(tx, id, next_at_ms, &reason, qubs_request_id.as_deref(), now)
            })
            .await
    }

    pub async fn entries(&self, ids: Vec<i64>) -> Result<Vec<Entry>, OutboxError> {
        self.store.read(move |tx, _| store::entries(tx, &ids)).await
    }

    pub async fn entry(&self, id: i64) -> Result<Option<Entry>, OutboxError> {
        Ok(self.entries(vec![id]).await?.pop())
    }

    pub async fn list(&self, filter: EntryFilter) -> Result<Vec<Entry>, OutboxError> {
        self.store.read(move |tx, _| store::list(tx, &filter)).await
    }

    /// Puts dead letters back in the queue; returns how many were dead.
    pub async fn requeue(&self, ids: Vec<i64>) -> Result<usize, OutboxError> {
        let n = self
            .store
            .write(move |tx, now| store::requeue(tx, &ids, now))
            .await?;
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

    /// Deletes `submitted` or `dead` results last updated before `older_than_ms`.
    pub async fn purge(
        &self,
        state: State,
        older_than_ms: i64,
        domains: Vec<String>,
    ) -> Result<usize, OutboxError> {
        if state == State::Pending {
            return Ok(0);
        }
        self.store
            .write(move |tx, _| store::purge(tx, state, older_than_ms, &domains))
            .await
    }

    /// Counts by state; `with_submitted` also counts the settled history (slower).
    pub async fn stats(&self, with_submitted: bool) -> Result<Stats, OutboxError> {
        self.store
            .read(move |tx, _| store::stats(tx, with_submitted))
            .await
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

    fn forget_waiters(&self, id: i64) {
        let mut waiters = self.waiters.lock().expect("waiters");
        if let Some(list) = waiters.get_mut(&id) {
            list.retain(|w| !w.is_closed());
            if list.is_empty() {
                waiters.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(key: &str, appointment: &str, status: &str) -> NewResult {
        NewResult {
            key: key.into(),
            domain: "acme".into(),
            appointment_id: appointment.into(),
            group: 0,
            report_status: status.into(),
            attachments: vec![Attachment {
                file_name: "r.pdf".into(),
                content_type: "application/pdf".into(),
                content: b"%PDF-1.4".to_vec(),
            }],
        }
    }

    fn message(results: Vec<NewResult>) -> NewMessage {
        NewMessage {
            source: Source::Hl7,
            source_id: "MSG1".into(),
            body: b"MSH|...".to_vec(),
            results,
        }
    }

    fn stored(a: Admission) -> Vec<i64> {
        match a {
            Admission::Stored { ids } => ids,
            other => panic!("expected Stored, got {other:?}"),
        }
    }

    fn submitted() -> Settled {
        Settled::Submitted(Receipt {
            report_guid: "g".into(),
            report_status: Some("final".into()),
            reported_at_utc: None,
        })
    }

    #[tokio::test]
    async fn retransmissions_are_recognised_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/outbox.db");
        let outbox = Outbox::open(&path).unwrap();
        let ids = stored(
            outbox
                .admit(message(vec![
                    result("k1", "A1", "final"),
                    result("k2", "A2", "final"),
                ]))
                .await
                .unwrap(),
        );
        assert_eq!(ids.len(), 2);
        let again = outbox
            .admit(message(vec![
                result("k1", "A1", "final"),
                result("k2", "A2", "final"),
            ]))
            .await
            .unwrap();
        assert_eq!(again, Admission::Duplicate { ids: ids.clone() });
        drop(outbox);
        // Give the writer thread a moment to close the database.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let outbox = Outbox::open(&path).unwrap();
        let stats = outbox.stats(true).await.unwrap();
        assert_eq!(stats.pending, 2);
        let due = outbox.due(10, vec![]).await.unwrap();
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].attachments.len(), 1);
        assert_eq!(due[0].attachments[0].content, b"%PDF-1.4");
        assert_eq!(due[0].body, b"MSH|...");
    }

    #[tokio::test]
    async fn one_appointment_at_a_time_in_arrival_order() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("o.db")).unwrap();
        let first = stored(
            outbox
                .admit(message(vec![result("k1", "A1", "preliminary")]))
                .await
                .unwrap(),
        )[0];
        let second = stored(
            outbox
                .admit(message(vec![result("k2", "A1", "final")]))
                .await
                .unwrap(),
        )[0];
        let other = stored(
            outbox
                .admit(message(vec![result("k3", "A2", "final")]))
                .await
                .unwrap(),
        )[0];
        let ids = |d: Vec<Due>| d.iter().map(|d| d.entry.id).collect::<Vec<_>>();
        assert_eq!(ids(outbox.due(10, vec![]).await.unwrap()), [first, other]);
        // Busy ones are skipped, and their appointment's later results still wait.
        assert_eq!(ids(outbox.due(10, vec![first]).await.unwrap()), [other]);
        outbox.settle(first, submitted()).await.unwrap();
        assert_eq!(ids(outbox.due(10, vec![]).await.unwrap()), [second, other]);
        // A retry later is not due now.
        outbox
            .retry_later(second, now_ms() + 60_000, "503".into(), None)
            .await
            .unwrap();
        assert_eq!(ids(outbox.due(10, vec![]).await.unwrap()), [other]);
        let e = outbox.entry(second).await.unwrap().unwrap();
        assert_eq!((e.attempts, e.state), (1, State::Pending));
        assert_eq!(e.last_error.as_deref(), Some("503"));
    }

    #[tokio::test]
    async fn a_preliminary_never_follows_a_final() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("o.db")).unwrap();
        let final_id = stored(
            outbox
                .admit(message(vec![result("k1", "A1", "final")]))
                .await
                .unwrap(),
        )[0];
        let refused = outbox
            .admit(message(vec![
                result("k2", "A2", "final"),
                result("k3", "A1", "preliminary"),
            ]))
            .await
            .unwrap();
        assert_eq!(
            refused,
            Admission::PreliminaryAfterFinal { index: 1, final_id }
        );
        // Nothing of the refused message was stored.
        assert_eq!(outbox.stats(true).await.unwrap().pending, 1);
        // A final that died does not stand in the way.
        outbox
            .settle(
                final_id,
                Settled::Dead {
                    kind: "not_found".into(),
                    reason: "404".into(),
                    qubs_request_id: None,
                },
            )
            .await
            .unwrap();
        stored(
            outbox
                .admit(message(vec![result("k3", "A1", "preliminary")]))
                .await
                .unwrap(),
        );
    }

    #[tokio::test]
    async fn waiters_hear_of_settling_and_operators_can_requeue_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("o.db")).unwrap();
        let id = stored(
            outbox
                .admit(message(vec![result("k1", "A1", "final")]))
                .await
                .unwrap(),
        )[0];
        assert_eq!(
            outbox.wait_settled(id, Duration::from_millis(20)).await,
            None
        );
        let waiter = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.wait_settled(id, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let dead = Settled::Dead {
            kind: "rejected".into(),
            reason: "400".into(),
            qubs_request_id: Some("req-1".into()),
        };
        outbox.settle(id, dead.clone()).await.unwrap();
        assert_eq!(waiter.await.unwrap(), Some(dead.clone()));
        // Waiting on a settled result answers at once and leaves no waiter behind.
        assert_eq!(
            outbox.wait_settled(id, Duration::from_secs(5)).await,
            Some(dead)
        );
        assert!(outbox.waiters.lock().unwrap().is_empty());
        let listed = outbox
            .list(EntryFilter {
                state: Some(State::Dead),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].qubs_request_id.as_deref(), Some("req-1"));
        assert_eq!(outbox.requeue(vec![id]).await.unwrap(), 1);
        assert_eq!(outbox.due(10, vec![]).await.unwrap().len(), 1);
        outbox.settle(id, submitted()).await.unwrap();
        // Purge never touches pending results, and takes settled ones older than asked.
        assert_eq!(outbox.purge(State::Submitted, 0, vec![]).await.unwrap(), 0);
        assert_eq!(
            outbox
                .purge(State::Submitted, now_ms() + 1, vec![])
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            outbox.stats(true).await.unwrap(),
            Stats {
                submitted: Some(0),
                ..Stats::default()
            }
        );
    }
}
