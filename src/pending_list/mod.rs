//! The pending list as last seen: every appointment QUBS listed as pending reporting, by id.
//!
//! QUBS documents one way to read appointments: the paged pending list. (A
//! single-appointment GET is not documented; `qubs.endpoints.appointment` turns it on.) So
//! whatever needs one appointment — `GetOrder`, the result worker (for the scheduled site,
//! hence the time zone), the feed's removal check — looks it up here. Every complete pass
//! over the list feeds it: the readiness probe's, the feed's, and the passes this module
//! makes itself when a lookup misses or its data is too old, one at a time per domain.
//!
//! The appointments are kept in the store ([`store`]; shared by the replicas on
//! PostgreSQL), written only when they
//! changed (or hourly, so rows of appointments that left the list can be told apart and
//! forgotten after a day). What was seen in which pass is kept in memory, 16 bytes per
//! appointment: which passes are complete, and in which pass each appointment was last
//! listed.

mod postgres;
mod sqlite;
pub mod store;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use serde_json::Value;
use tokio::time::Instant;

use crate::qubs::{self, Appointment};
use crate::store::StoreError;
pub use store::{PendingListStore, PendingStore};

/// The pending list's table on each backend.
pub static SCHEMA: crate::store::migrate::Component = crate::store::migrate::Component {
    name: "pending_list",
    copy: &[("pending_appointments", "pending_appointments")],
    sqlite: sqlite::MIGRATIONS,
    postgres: postgres::MIGRATIONS,
};

/// A lookup that misses reads the list again only if the last pass began longer ago than
/// this: a burst of lookups for appointments QUBS does not list costs one pass.
const MISS_REFRESH_AFTER: Duration = Duration::from_secs(5);

/// An unchanged appointment's row is rewritten (its `seen_at` renewed) this often.
const TOUCH_EVERY: Duration = Duration::from_secs(3600);

/// Rows of appointments not listed for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum PendingListError {
    #[error(transparent)]
    Qubs(#[from] qubs::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One pass over a domain's pending list, begun with [`PendingList::begin`].
#[derive(Debug)]
pub struct Pass {
    domain: String,
    number: u32,
    started: Instant,
}

/// An appointment found by [`PendingList::find`].
#[derive(Debug, Clone)]
pub enum Found {
    /// Listed by the latest complete pass.
    Listed(Appointment),
    /// Listed once, but not by the latest complete pass: it may have left the list, or the
    /// pass may have missed it (QUBS does not promise a stable order across pages).
    NotListedLately(Appointment),
}

/// What one appointment's last listing left in memory.
#[derive(Clone, Copy)]
struct Seen {
    /// Hash of the document as last written to the store.
    document: u64,
    /// The last pass that listed it.
    pass: u32,
    /// When its row was last written, in minutes since the index was created.
    written_min: u32,
}

#[derive(Default)]
struct DomainIndex {
    /// Passes begun so far.
    started: u32,
    /// The latest complete pass: its number and when it began.
    complete: Option<(u32, Instant)>,
    /// By a hash of the appointment id.
    seen: HashMap<u64, Seen>,
    last_forget: Option<Instant>,
}

/// The pending list as last seen, for every domain.
pub struct PendingList {
    client: qubs::Client,
    store: PendingStore,
    /// How old a complete pass may be for `GetOrder` to serve from it.
    max_age: Duration,
    created: Instant,
    domains: Mutex<HashMap<String, DomainIndex>>,
    /// One pass of this module's own at a time per domain.
    refreshing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn id_hash(id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// A hash of a JSON value, walking it (no serialization): tells whether a listed
/// appointment changed since it was stored.
fn value_hash(value: &Value, h: &mut impl Hasher) {
    match value {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => (1u8, b).hash(h),
        Value::Number(n) => (2u8, n.to_string()).hash(h),
        Value::String(s) => (3u8, s).hash(h),
        Value::Array(items) => {
            (4u8, items.len()).hash(h);
            for item in items {
                value_hash(item, h);
            }
        }
        Value::Object(map) => {
            (5u8, map.len()).hash(h);
            for (k, v) in map {
                k.hash(h);
                value_hash(v, h);
            }
        }
    }
}

fn document_hash(a: &Appointment) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (k, v) in a.fields() {
        k.hash(&mut h);
        value_hash(v, &mut h);
    }
    h.finish()
}

impl PendingList {
    pub fn new(client: qubs::Client, store: PendingStore, max_age: Duration) -> PendingList {
        PendingList {
            client,
            store,
            max_age,
            created: Instant::now(),
            domains: Mutex::new(HashMap::new()),
            refreshing: Mutex::new(HashMap::new()),
        }
    }

    fn minutes(&self) -> u32 {
        (self.created.elapsed().as_secs() / 60) as u32
    }

    /// Starts a pass over `domain`'s list: record each page with [`PendingList::record`],
    /// and [`PendingList::complete`] it once the last page was read.
    pub fn begin(&self, domain: &str) -> Pass {
        let mut domains = self.domains.lock().expect("pending list");
        let index = domains.entry(domain.to_string()).or_default();
        index.started += 1;
        Pass {
            domain: domain.to_string(),
            number: index.started,
            started: Instant::now(),
        }
    }

    /// Records one page of a pass; stores the appointments that changed.
    pub async fn record(
        &self,
        pass: &Pass,
        appointments: &[Appointment],
    ) -> Result<(), StoreError> {
        let now = self.minutes();
        let touch = (TOUCH_EVERY.as_secs() / 60) as u32;
        let changed: Vec<Appointment> = {
            let mut domains = self.domains.lock().expect("pending list");
            let index = domains.entry(pass.domain.clone()).or_default();
            appointments
                .iter()
                .filter(|a| {
                    let document = document_hash(a);
                    let seen = index.seen.entry(id_hash(a.id())).or_insert(Seen {
                        document: !document,
                        pass: 0,
                        written_min: 0,
                    });
                    seen.pass = seen.pass.max(pass.number);
                    let write =
                        seen.document != document || now.saturating_sub(seen.written_min) >= touch;
                    if write {
                        seen.document = document;
                        seen.written_min = now;
                    }
                    write
                })
                .cloned()
                .collect()
        };
        let saved = self.store.save(&pass.domain, changed.clone()).await;
        if saved.is_err() {
            // Not stored: write them again next time they are listed.
            let mut domains = self.domains.lock().expect("pending list");
            if let Some(index) = domains.get_mut(&pass.domain) {
                for a in &changed {
                    if let Some(seen) = index.seen.get_mut(&id_hash(a.id())) {
                        seen.document = !seen.document;
                    }
                }
            }
        }
        saved
    }

    /// Marks a pass complete: every page was read. Now and then forgets appointments that
    /// have not been listed for a day.
    pub async fn complete(&self, pass: Pass) {
        let forget = {
            let mut domains = self.domains.lock().expect("pending list");
            let index = domains.entry(pass.domain.clone()).or_default();
            if index.complete.is_none_or(|(n, _)| n < pass.number) {
                index.complete = Some((pass.number, pass.started));
            }
            let due = index.last_forget.is_none_or(|t| t.elapsed() >= TOUCH_EVERY);
            if due {
                index.last_forget = Some(Instant::now());
                // Listed appointments are rewritten hourly; the others stopped at their last
                // listing.
                let now = self.minutes();
                let forget = (FORGET_AFTER.as_secs() / 60) as u32;
                index
                    .seen
                    .retain(|_, s| now.saturating_sub(s.written_min) < forget);
            }
            due
        };
        if forget
            && let Err(e) = self
                .store
                .forget_unseen_for(&pass.domain, FORGET_AFTER)
                .await
        {
            tracing::warn!(domain = %pass.domain, error = %e, "could not prune the pending list");
        }
    }

    /// Whether `appointment_id` was listed by a pass that began after `pass` did.
    pub fn listed_since(&self, pass: &Pass, appointment_id: &str) -> bool {
        let domains = self.domains.lock().expect("pending list");
        domains
            .get(&pass.domain)
            .and_then(|i| i.seen.get(&id_hash(appointment_id)))
            .is_some_and(|s| s.pass > pass.number)
    }

    /// When the latest complete pass over `domain` began.
    fn latest_complete(&self, domain: &str) -> Option<Instant> {
        let domains = self.domains.lock().expect("pending list");
        domains.get(domain)?.complete.map(|(_, began)| began)
    }

    /// Whether the latest complete pass listed it, and when that pass began.
    fn listed_lately(&self, domain: &str, appointment_id: &str) -> (bool, Option<Instant>) {
        let domains = self.domains.lock().expect("pending list");
        let Some(index) = domains.get(domain) else {
            return (false, None);
        };
        let Some((number, started)) = index.complete else {
            return (false, None);
        };
        let listed = index
            .seen
            .get(&id_hash(appointment_id))
            .is_some_and(|s| s.pass >= number);
        (listed, Some(started))
    }

    /// Reads the whole list once, unless a pass that began after this call was made has
    /// completed meanwhile (another caller's, or one of this module's), or — with
    /// `unless_within` — the latest complete pass began less than that long ago.
    pub async fn refresh(
        &self,
        domain: &str,
        unless_within: Option<Duration>,
    ) -> Result<(), PendingListError> {
        let asked = Instant::now();
        let lock = self
            .refreshing
            .lock()
            .expect("pending list")
            .entry(domain.to_string())
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        if self.latest_complete(domain).is_some_and(|began| {
            began >= asked || unless_within.is_some_and(|w| began.elapsed() < w)
        }) {
            return Ok(());
        }
        let pass = self.begin(domain);
        let mut pages = std::pin::pin!(self.client.pending_pages(domain));
        let mut listed = 0usize;
        while let Some(page) = pages.try_next().await? {
            listed += page.appointments.len();
            self.record(&pass, &page.appointments).await?;
        }
        tracing::debug!(domain, listed, "pending list read");
        self.complete(pass).await;
        Ok(())
    }

    /// An appointment by id, for `GetOrder`: from a pass at most `max_age` old, reading the
    /// list again first when the latest is older or did not list it. `None` when QUBS has
    /// never listed it as pending.
    pub async fn find(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Option<Found>, PendingListError> {
        let (listed, began) = self.listed_lately(domain, appointment_id);
        let fresh = began.is_some_and(|b| b.elapsed() <= self.max_age);
        if !(listed && fresh) {
            let within = if fresh {
                MISS_REFRESH_AFTER
            } else {
                self.max_age
            };
            self.refresh(domain, Some(within)).await?;
        }
        let (listed, _) = self.listed_lately(domain, appointment_id);
        Ok(self
            .store
            .appointment(domain, appointment_id)
            .await?
            .map(|a| {
                if listed {
                    Found::Listed(a)
                } else {
                    Found::NotListedLately(a)
                }
            }))
    }

    /// The scheduled site of an appointment as last listed, reading the list again when it
    /// is not there: `None` when QUBS has not listed it, `Some(None)` when it names no site.
    /// The list read again is one begun after this call (a result is not given up on
    /// because of a pass that may predate its appointment's listing).
    pub async fn site_of(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Option<Option<String>>, PendingListError> {
        if let Some(site) = self.store.site_name(domain, appointment_id).await? {
            return Ok(Some(site));
        }
        self.refresh(domain, None).await?;
        Ok(self.store.site_name(domain, appointment_id).await?)
    }

    /// The client the passes read with.
    pub fn client(&self) -> &qubs::Client {
        &self.client
    }

    /// One appointment for `GetOrder` and the console: from QUBS's single-appointment
    /// endpoint when configured, else from the pending list ([`PendingList::find`]).
    /// `Ok(None)`: not in the list. The flag says whether the latest pass listed it.
    pub async fn appointment(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Option<(Appointment, bool)>, PendingListError> {
        if self.client.has_appointment_endpoint() {
            let a = self.client.appointment(domain, appointment_id).await?;
            return Ok(Some((a, true)));
        }
        Ok(match self.find(domain, appointment_id).await? {
            Some(Found::Listed(a)) => Some((a, true)),
            Some(Found::NotListedLately(a)) => Some((a, false)),
            None => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn document_hash_sees_changes_anywhere_and_only_changes() {
        let a = |v: Value| Appointment::from_json(v).unwrap();
        let base = json!({"appointmentId": "A1", "x": {"y": [1, "two", null]}});
        let h = document_hash(&a(base.clone()));
        assert_eq!(h, document_hash(&a(base)));
        for changed in [
            json!({"appointmentId": "A1", "x": {"y": [1, "two", false]}}),
            json!({"appointmentId": "A1", "x": {"y": [1, "two"]}}),
            json!({"appointmentId": "A1", "x": {"z": [1, "two", null]}}),
            json!({"appointmentId": "A1", "x": {"y": [1.5, "two", null]}}),
        ] {
            assert_ne!(h, document_hash(&a(changed)));
        }
    }
}
