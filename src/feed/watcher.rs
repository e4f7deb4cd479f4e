//! Polls each watched domain's pending list and turns what changed into feed events.
//!
//! An order a complete poll did not return may still be pending: QUBS does not promise a
//! stable order across pages. It counts as removed only once QUBS says so: with the
//! single-appointment GET (`qubs.endpoints.appointment`), by a 404 or a status other than
//! PENDING REPORTING; without it — QUBS documents none — by a 404 for its comments, which
//! QUBS serves for pending reporting appointments only. Should comments answer regardless,
//! an order missing from [`MISSED_POLLS_BEFORE_REMOVAL`] complete polls in a row is taken as
//! removed all the same. One listed by a later pass (the readiness probe's) is kept.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use rand::Rng;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::resend::{RenderError, ResendError, render};
use super::{Baseline, EventKind, Feed, FeedSettings, FirstRun, NewEvent, OnRemoved};
use crate::live_mappings::LiveMappings;
use crate::mapping::MappingSet;
use crate::orders::{Include, Order};
use crate::pending_list::{Pass, PendingList};
use crate::qubs;

/// A known order missing from this many complete polls in a row, whose comments QUBS still
/// serves, is taken as removed.
pub const MISSED_POLLS_BEFORE_REMOVAL: u32 = 5;

/// What the watcher needs; one per service, shared by the per-domain loops.
pub struct Watcher {
    pub feed: Arc<Feed>,
    pub client: qubs::Client,
    /// Every pass is recorded there; a later pass's listing keeps an order.
    pub pending: Arc<PendingList>,
    pub mappings: Arc<LiveMappings>,
    pub config_values: Map<String, Value>,
    pub settings: FeedSettings,
    pub metrics: Arc<super::deliver::FeedMetrics>,
    /// Complete polls in a row each known order was missing from, by (domain, id).
    pub missed: Mutex<HashMap<(String, String), u32>>,
    /// Values the feed's mapping did not know (counted and logged, never shown).
    pub unmapped: Arc<crate::unmapped::UnmappedValues>,
}

/// What one poll found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollSummary {
    pub pending: usize,
    pub new: usize,
    pub changed: usize,
    pub removed: usize,
    pub baselined: usize,
    /// Orders whose mapping failed; they are tried again at the next poll.
    pub unmappable: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Qubs(#[from] qubs::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl Watcher {
    /// Polls `domain` until shutdown: an interval with jitter between polls, doubling
    /// back-off after a failed one. A failed poll keeps the events it already stored, and
    /// decides nothing about removals.
    pub async fn run(self: Arc<Self>, domain: String, shutdown: CancellationToken) {
        let mut backoff = crate::backoff::Backoff::from_millis(
            self.settings.retry_initial_ms,
            self.settings.retry_max_ms,
        );
        let mut reloads = self.mappings.subscribe();
        loop {
            reloads.borrow_and_update();
            let outcome = tokio::select! {
                o = self.poll(&domain) => o,
                _ = shutdown.cancelled() => return,
            };
            let wait = match outcome {
                Ok(summary) => {
                    backoff.reset();
                    if summary.new + summary.changed + summary.removed > 0 {
                        tracing::info!(
                            domain,
                            pending = summary.pending,
                            new = summary.new,
                            changed = summary.changed,
                            removed = summary.removed,
                            unmappable = summary.unmappable,
                            "feed poll found changes"
                        );
                    } else {
                        tracing::debug!(domain, pending = summary.pending, "feed poll: no changes");
                    }
                    let _ = self.feed.polled(&domain, None).await;
                    jittered(
                        Duration::from_secs(self.settings.poll_interval_secs),
                        self.settings.poll_jitter,
                    )
                }
                Err(e) => {
                    self.metrics.poll_failures.inc();
                    let wait = backoff.next_delay();
                    tracing::warn!(domain, error = %e, retry_in_ms = wait.as_millis() as u64, "feed poll failed; will retry");
                    let _ = self.feed.polled(&domain, Some(e.to_string())).await;
                    wait
                }
            };
            // A new mapping set is compared with what consumers have at once, not a poll
            // interval later.
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = reloads.changed() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One pass over the domain's pending list, after comparing the tracked orders with a
    /// new mapping set (`on_mapping_change`).
    pub async fn poll(&self, domain: &str) -> Result<PollSummary, PollError> {
        let _watch = self.feed.lock_watch(domain).await;
        if self.mappings.is_loaded() {
            self.reconcile(domain).await?;
        }
        let known = self.feed.fingerprints(domain).await?;
        let first_run = !self.feed.baselined(domain).await?;
        let baseline_only = first_run && self.settings.first_run == FirstRun::Baseline;
        let include = Include {
            comments: self.settings.include_comments,
            attachments: false,
        };
        let mut summary = PollSummary::default();
        let mut seen: HashSet<String> = HashSet::with_capacity(known.len());
        let pass = self.pending.begin(domain);
        let mut pages = std::pin::pin!(self.client.pending_pages(domain));
        while let Some(page) = pages.try_next().await? {
            // An unreadable item may be a known order: it has not left the list.
            seen.extend(page.skipped.iter().filter_map(|s| s.id.clone()));
            summary.pending += page.appointments.len();
            if let Err(e) = self.pending.record(&pass, &page.appointments).await {
                tracing::warn!(domain, error = %e, "could not store the pending list");
            }
            let orders: Vec<Order> = futures::stream::iter(page.appointments)
                .map(|a| Order::assemble(&self.client, domain, a, include))
                .buffered(self.settings.fetch_concurrency)
                .try_collect()
                .await?;
            // One mapping set for the whole page, even if a reload happens meanwhile.
            let mappings = self.mappings.current();
            let mut events = Vec::new();
            let mut baseline = Vec::new();
            for order in orders {
                let id = order.appointment.id().to_string();
                let patient_id = order.appointment.patient_id().map(str::to_string);
                let mut document = order.to_json(&self.config_values);
                let fingerprint = mappings.order_fingerprint(&document);
                let kind = match known.get(&id) {
                    Some(f) if *f == fingerprint => {
                        seen.insert(id);
                        continue;
                    }
                    Some(_)
                        if self
                            .reads_changed(&mappings, domain, &id, &fingerprint)
                            .await? =>
                    {
                        // The mappings read other fields now; the order itself has not
                        // changed in anything they read. Consumers hear of a mapping change
                        // through `on_mapping_change`, not as a change of every order.
                        seen.insert(id.clone());
                        baseline.push(Baseline {
                            appointment_id: id,
                            patient_id,
                            fingerprint,
                            document: document.to_string().into_bytes(),
                            message: None,
                        });
                        continue;
                    }
                    Some(_) => EventKind::Changed,
                    None => EventKind::New,
                };
                seen.insert(id.clone());
                if baseline_only {
                    summary.baselined += 1;
                    // What consumers are taken to hold, for comparing a later mapping set.
                    let held = render(&mappings, &self.settings.mapping, &mut document, kind)
                        .ok()
                        .map(|r| (kind, r.message));
                    baseline.push(Baseline {
                        appointment_id: id,
                        patient_id,
                        fingerprint,
                        document: document.to_string().into_bytes(),
                        message: held,
                    });
                    continue;
                }
                match self.event(&mappings, domain, &id, kind, &mut document) {
                    Some((message, control_id)) => {
                        match kind {
                            EventKind::New => summary.new += 1,
                            _ => summary.changed += 1,
                        }
                        events.push(NewEvent {
                            appointment_id: id,
                            patient_id,
                            kind,
                            fingerprint,
                            document: document.to_string().into_bytes(),
                            message,
                            control_id,
                            mapping_version: mappings.version().to_string(),
                        });
                    }
                    None => summary.unmappable += 1,
                }
            }
            self.count(&events);
            self.feed
                .record(domain, events, baseline, Vec::new())
                .await?;
        }
        // The whole list was read. QUBS does not promise a stable order across pages, so a
        // known order this pass did not see may still be pending: QUBS decides (module doc).
        let unseen: Vec<String> = known
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        let gone = self.left_the_list(domain, &pass, unseen).await;
        self.pending.complete(pass).await;
        let gone = gone?;
        summary.removed = gone.len();
        if !gone.is_empty() {
            let mut events = Vec::new();
            let mut forget = Vec::new();
            let mappings = self.mappings.current();
            for id in gone {
                let last = match self.settings.on_removed {
                    OnRemoved::Ignore => None,
                    OnRemoved::Send => self.feed.document(domain, &id).await?,
                };
                let Some(mut document) =
                    last.and_then(|d| serde_json::from_slice::<Value>(&d).ok())
                else {
                    forget.push(id);
                    continue;
                };
                match self.event(&mappings, domain, &id, EventKind::Removed, &mut document) {
                    Some((message, control_id)) => events.push(NewEvent {
                        patient_id: document
                            .pointer("/appointment/patientId")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        appointment_id: id,
                        kind: EventKind::Removed,
                        fingerprint: String::new(),
                        document: document.to_string().into_bytes(),
                        message,
                        control_id,
                        mapping_version: mappings.version().to_string(),
                    }),
                    None => forget.push(id),
                }
            }
            self.count(&events);
            self.feed.record(domain, events, Vec::new(), forget).await?;
        }
        Ok(summary)
    }

    /// Of the known orders a pass did not see, those that have really left the pending list
    /// (see the module doc). One the pass merely missed is kept, so it is neither cancelled
    /// nor sent again as new.
    async fn left_the_list(
        &self,
        domain: &str,
        pass: &Pass,
        unseen: Vec<String>,
    ) -> Result<Vec<String>, PollError> {
        let unseen: Vec<String> = unseen
            .into_iter()
            .filter(|id| !self.pending.listed_since(pass, id))
            .collect();
        let by_get = self.client.has_appointment_endpoint();
        let checked: Vec<(String, bool)> = futures::stream::iter(unseen)
            .map(|id| async move {
                let answer = if by_get {
                    self.client
                        .appointment(domain, &id)
                        .await
                        .map(|a| !a.is_pending_reporting())
                } else {
                    self.client.comments(domain, &id).await.map(|_| false)
                };
                match answer {
                    Ok(gone) => Ok((id, gone)),
                    Err(e) if e.is_not_found() => Ok((id, true)),
                    Err(e) => Err(e),
                }
            })
            .buffered(self.settings.fetch_concurrency)
            .try_collect()
            .await?;
        // Orders listed again start counting from nothing.
        let still_missed: HashSet<&str> = checked.iter().map(|(id, _)| id.as_str()).collect();
        let mut missed = self.missed.lock().expect("missed orders");
        missed.retain(|(d, id), _| d != domain || still_missed.contains(id.as_str()));
        let mut gone = Vec::new();
        let mut kept = 0;
        for (id, answered_gone) in checked {
            let key = (domain.to_string(), id);
            let n = missed.entry(key.clone()).or_insert(0);
            *n += 1;
            let too_long = !by_get && *n >= MISSED_POLLS_BEFORE_REMOVAL;
            if answered_gone || too_long {
                if too_long && !answered_gone {
                    tracing::info!(
                        domain,
                        appointment_id = %key.1,
                        polls = *n,
                        "an order missing from the pending list this many polls in a row is taken as removed"
                    );
                }
                missed.remove(&key);
                gone.push(key.1);
            } else {
                kept += 1;
            }
        }
        if kept > 0 {
            tracing::debug!(
                domain,
                missed = kept,
                "pending orders the list pass did not return; kept"
            );
        }
        Ok(gone)
    }

    /// Compares the tracked orders with a new mapping set (see [`super::resend`]).
    async fn reconcile(&self, domain: &str) -> Result<(), PollError> {
        let mappings = self.mappings.current();
        match self.feed.reconcile_mappings(&mappings, domain).await {
            Ok(Some(r)) => {
                tracing::info!(
                    domain,
                    mapping_version = %r.mapping_version,
                    tracked = r.tracked,
                    resent = r.resent,
                    unchanged = r.unchanged,
                    unknown = r.unknown,
                    unmappable = r.unmappable,
                    "mapping set changed: orders whose message changed were resent"
                );
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(ResendError::Store(e)) => Err(e.into()),
            Err(e) => {
                tracing::warn!(domain, error = %e, "could not compare orders with the new mapping set");
                Ok(())
            }
        }
    }

    /// Whether a tracked order's new fingerprint comes from the mappings reading other
    /// fields: its stored document, fingerprinted by the current set, gives the same one.
    async fn reads_changed(
        &self,
        mappings: &MappingSet,
        domain: &str,
        appointment_id: &str,
        fingerprint: &str,
    ) -> Result<bool, PollError> {
        let stored = self.feed.document(domain, appointment_id).await?;
        Ok(stored
            .and_then(|d| serde_json::from_slice::<Value>(&d).ok())
            .is_some_and(|d| mappings.order_fingerprint(&d) == fingerprint))
    }

    /// Sets `event.kind` in the document and renders the feed's message. `None` when the
    /// mapping fails (logged with the rule, never the values).
    fn event(
        &self,
        mappings: &MappingSet,
        domain: &str,
        appointment_id: &str,
        kind: EventKind,
        document: &mut Value,
    ) -> Option<(String, String)> {
        match render(mappings, &self.settings.mapping, document, kind) {
            Ok(rendered) => {
                self.unmapped.record(
                    &self.settings.mapping,
                    &rendered.version,
                    domain,
                    appointment_id,
                    &rendered.unmapped,
                );
                Some((rendered.message, rendered.control_id))
            }
            Err(RenderError::NotHl7(_)) => {
                tracing::error!(
                    mapping = %self.settings.mapping,
                    "feed.mapping renders FHIR, not HL7; no feed message can be sent"
                );
                None
            }
            Err(RenderError::Map(e)) => {
                self.metrics.mapping_failures.inc();
                tracing::warn!(
                    domain,
                    appointment_id,
                    event = kind.as_str(),
                    error = %e,
                    "order does not map; it is tried again at the next poll"
                );
                None
            }
        }
    }

    fn count(&self, events: &[NewEvent]) {
        for e in events {
            self.metrics
                .events
                .get_or_create(&super::deliver::KindLabels {
                    kind: e.kind.as_str().to_string(),
                })
                .inc();
        }
    }
}

/// The poll interval spread by up to `fraction` either way, so that polls of several
/// domains (or bridges) do not fall in step. (Back-off after failures is
/// [`crate::backoff::Backoff`].)
fn jittered(base: Duration, fraction: f64) -> Duration {
    if fraction <= 0.0 {
        return base;
    }
    let f = rand::rng().random_range(-fraction..=fraction);
    base.mul_f64((1.0 + f).max(0.0))
}
