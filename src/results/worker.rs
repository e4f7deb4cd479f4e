//! The outbox worker: submits stored reports to QUBS and settles them.
//!
//! Each due report is mapped again, now in its appointment's site time zone, and POSTed
//! with its stored `Idempotency-Key`; its PDFs are then registered and uploaded. Failures
//! fall in three classes:
//! - **transient** (429, 5xx, 401/403 while credentials are being fixed, connection
//!   errors): tried again with exponential back-off and jitter;
//! - **ambiguous** (a timeout or broken connection after the request went out, an
//!   unreadable answer): tried again the same way — the same key makes QUBS answer with the
//!   original report if the first attempt did land;
//! - **permanent** (400, 404, 409, a report too large, a mapping that no longer maps): the
//!   report goes to the dead letters with the reason.
//!
//! Retries stop at the retry horizon, counted from when the report was received; it must
//! stay under the 24 hours QUBS keeps idempotency keys, so a late retry can never store a
//! second report. Reports of one appointment are submitted one at a time, in arrival order
//! (the outbox only hands out the oldest unsettled one); different appointments go in
//! parallel, up to `results.workers`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Results;
use crate::domain::ReportSubmission;
use crate::metrics::Metrics;
use crate::outbox::{Due, Receipt, Settled, Source, now_ms};
use crate::qubs::{self, ErrorKind, ReportAttachmentFile};

/// How often the worker looks for due reports when nothing wakes it.
const POLL: Duration = Duration::from_millis(500);

/// What one attempt came to.
#[derive(Debug)]
enum Step {
    Submitted(Receipt),
    Retry {
        reason: String,
        qubs_request_id: Option<String>,
    },
    Dead {
        kind: &'static str,
        reason: String,
        qubs_request_id: Option<String>,
    },
}

/// Each appointment's site (by name; `None`: it has none), learnt when its first result was
/// submitted, so that a burst of results for the same appointments does not cost an
/// appointment read each. The site's settings come from the QUBS client's own cache, per
/// site: keeping them here per appointment held up to ~75 MB at 50,000 appointments.
#[derive(Default)]
struct SiteCache {
    sites: Mutex<HashMap<AppointmentKey, (Instant, Option<String>)>>,
}

/// (domain, appointment id)
type AppointmentKey = (String, String);

const SITE_CACHE_MAX: usize = 50_000;

impl SiteCache {
    fn get(&self, key: &AppointmentKey, ttl: Duration) -> Option<Option<String>> {
        let sites = self.sites.lock().expect("site cache");
        sites
            .get(key)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, key: AppointmentKey, site: Option<String>) {
        let mut sites = self.sites.lock().expect("site cache");
        if sites.len() >= SITE_CACHE_MAX {
            sites.clear();
        }
        sites.insert(key, (Instant::now(), site));
    }
}

/// Runs until `shutdown`; in-flight submissions are finished first (their reports stay
/// pending if cut short, and are retried with the same key on the next start).
pub async fn run(results: Arc<Results>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let workers = results.settings.workers.max(1);
    let cache = Arc::new(SiteCache::default());
    let mut running: JoinSet<()> = JoinSet::new();
    // Outbox ids being submitted, by task: a finished (or panicked) task frees its id.
    let mut busy: HashMap<tokio::task::Id, i64> = HashMap::new();
    let mut last_stats = Instant::now() - Duration::from_secs(60);
    loop {
        if last_stats.elapsed() >= Duration::from_secs(2) {
            if let Ok(stats) = results.outbox.stats(false).await {
                metrics.outbox_stats(&stats, now_ms());
            }
            last_stats = Instant::now();
        }
        let free = workers.saturating_sub(busy.len());
        if free > 0 && !shutdown.is_cancelled() {
            match results.outbox.claim(free).await {
                Ok(due) => {
                    for d in due {
                        let id = d.entry.id;
                        let (results, metrics, cache) =
                            (results.clone(), metrics.clone(), cache.clone());
                        let task = running.spawn(async move {
                            attempt(&results, &metrics, &cache, d).await;
                        });
                        busy.insert(task.id(), id);
                    }
                }
                Err(e) => tracing::error!(error = %e, "outbox unavailable to the worker"),
            }
        }
        tokio::select! {
            Some(done) = running.join_next_with_id() => {
                match done {
                    Ok((task, ())) => {
                        busy.remove(&task);
                    }
                    Err(e) => {
                        // The report stays pending and is tried again with the same key.
                        tracing::error!(error = %e, "a submission attempt failed unexpectedly");
                        if let Some(id) = busy.remove(&e.id()) {
                            results.outbox.release(id).await;
                        }
                    }
                }
            }
            _ = results.outbox.wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
        }
        if shutdown.is_cancelled() && running.is_empty() {
            return;
        }
    }
}

/// One attempt at one report, and its bookkeeping.
async fn attempt(results: &Results, metrics: &Metrics, cache: &SiteCache, due: Due) {
    let entry = due.entry.clone();
    let claimed_at_ms = due.claimed_at_ms;
    let started = Instant::now();
    let step = submit(results, cache, due).await;
    let outcome = match &step {
        Step::Submitted(_) => "submitted",
        Step::Retry { .. } => "retry",
        Step::Dead { .. } => "dead",
    };
    metrics.outbox_attempt(outcome, started.elapsed());
    let stored = match step {
        Step::Submitted(receipt) => {
            tracing::info!(
                outbox_id = entry.id,
                domain = %entry.domain,
                appointment_id = %entry.appointment_id,
                attempts = entry.attempts + 1,
                "report submitted to QUBS"
            );
            results
                .outbox
                .settle(entry.id, Settled::Submitted(receipt))
                .await
        }
        Step::Retry {
            reason,
            qubs_request_id,
        } => {
            // The store's clock, as the horizon was counted from its receipt time.
            let now = claimed_at_ms + started.elapsed().as_millis() as i64;
            let s = &results.settings;
            let exp = s
                .retry_initial_ms
                .saturating_mul(1u64 << entry.attempts.min(20))
                .min(s.retry_max_ms);
            // Full jitter in the upper half: spreads a burst of retries out.
            let delay = rand::rng().random_range(exp / 2..=exp.max(1)) as i64;
            let horizon = entry.received_at_ms + (s.retry_horizon_secs * 1000) as i64;
            if now + delay > horizon {
                tracing::warn!(
                    outbox_id = entry.id,
                    domain = %entry.domain,
                    appointment_id = %entry.appointment_id,
                    attempts = entry.attempts + 1,
                    "retry horizon reached; report moved to dead letters"
                );
                results
                    .outbox
                    .settle(
                        entry.id,
                        Settled::Dead {
                            kind: "horizon".into(),
                            reason: format!(
                                "QUBS did not take the report within the retry horizon ({} s, {} attempts); last error: {reason}",
                                s.retry_horizon_secs,
                                entry.attempts + 1
                            ),
                            qubs_request_id,
                        },
                    )
                    .await
            } else {
                tracing::warn!(
                    outbox_id = entry.id,
                    domain = %entry.domain,
                    appointment_id = %entry.appointment_id,
                    attempts = entry.attempts + 1,
                    retry_in_ms = delay,
                    error = %reason,
                    "report submission failed; will retry"
                );
                results
                    .outbox
                    .retry_later(
                        entry.id,
                        Duration::from_millis(delay as u64),
                        reason,
                        qubs_request_id,
                    )
                    .await
            }
        }
        Step::Dead {
            kind,
            reason,
            qubs_request_id,
        } => {
            tracing::warn!(
                outbox_id = entry.id,
                domain = %entry.domain,
                appointment_id = %entry.appointment_id,
                kind,
                error = %reason,
                "report refused; moved to dead letters"
            );
            results
                .outbox
                .settle(
                    entry.id,
                    Settled::Dead {
                        kind: kind.into(),
                        reason,
                        qubs_request_id,
                    },
                )
                .await
        }
    };
    if let Err(e) = stored {
        // The report stays pending as it was: it will be tried again with the same key.
        tracing::error!(outbox_id = entry.id, error = %e, "could not record a submission outcome");
    }
}

async fn submit(results: &Results, cache: &SiteCache, due: Due) -> Step {
    let entry = &due.entry;
    let report = match build(results, cache, &due).await {
        Ok(r) => r,
        Err(step) => return step,
    };
    let receipt = match results
        .client
        .submit_report(&entry.domain, &report, Some(&entry.idempotency_key))
        .await
    {
        Ok(r) => r,
        Err(e) => return classify(&entry.appointment_id, &e),
    };
    if !due.attachments.is_empty()
        && let Err(step) = upload(results, &due).await
    {
        return step;
    }
    Step::Submitted(Receipt {
        report_guid: receipt.report_guid,
        report_status: receipt.report_status,
        reported_at_utc: receipt.reported_at_utc,
    })
}

/// The submission, mapped from the stored input in the appointment's site time zone.
async fn build(results: &Results, cache: &SiteCache, due: &Due) -> Result<ReportSubmission, Step> {
    let entry = &due.entry;
    let mapping_dead = |reason: String| Step::Dead {
        kind: "mapping",
        reason,
        qubs_request_id: None,
    };
    match due.source {
        Source::Report => serde_json::from_slice(&due.body)
            .map_err(|e| mapping_dead(format!("stored report is unreadable: {e}"))),
        Source::Hl7 | Source::Fhir => {
            let site = site_of(results, cache, &entry.domain, &entry.appointment_id).await?;
            let ctx = results.context(&entry.domain, site);
            let set = results.mappings.current();
            let inbound = if due.source == Source::Hl7 {
                set.map_oru(&String::from_utf8_lossy(&due.body), &ctx)
            } else {
                let value: Value = serde_json::from_slice(&due.body)
                    .map_err(|e| mapping_dead(format!("stored report is unreadable: {e}")))?;
                set.map_diagnostic_report(&value, &ctx)
            }
            .map_err(|e| {
                mapping_dead(format!(
                    "the stored result no longer maps with mapping set {}: {e}",
                    set.version()
                ))
            })?;
            inbound
                .submissions
                .into_iter()
                .find(|s| s.appointment_id == entry.appointment_id)
                .ok_or_else(|| {
                    mapping_dead(format!(
                        "the stored result no longer maps to appointment {}",
                        entry.appointment_id
                    ))
                })
        }
    }
}

/// The site settings of an appointment (`null` when it has no site QUBS knows).
async fn site_of(
    results: &Results,
    cache: &SiteCache,
    domain: &str,
    appointment_id: &str,
) -> Result<Value, Step> {
    let key = (domain.to_string(), appointment_id.to_string());
    let ttl = results.client.site_cache_ttl();
    let site = match cache.get(&key, ttl) {
        Some(site) => site,
        None => {
            let appointment = results
                .client
                .appointment(domain, appointment_id)
                .await
                .map_err(|e| classify(appointment_id, &e))?;
            if !appointment.is_pending_reporting() {
                let status = appointment.status().unwrap_or_default();
                return Err(Step::Dead {
                    kind: "not_pending",
                    reason: format!(
                        "appointment {appointment_id} is not pending reporting (status {status})"
                    ),
                    qubs_request_id: None,
                });
            }
            let site = appointment
                .scheduled_site()
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            cache.put(key, site.clone());
            site
        }
    };
    match site {
        None => Ok(Value::Null),
        Some(site) => match results.client.site_settings(domain, &site).await {
            Ok(s) => Ok(serde_json::to_value(s).unwrap_or(Value::Null)),
            Err(e) if e.is_not_found() => Ok(Value::Null),
            Err(e) => Err(classify(appointment_id, &e)),
        },
    }
}

/// Registers and uploads the report's PDFs. Registration carries a key derived from the
/// report's, so a repeated attempt gets the same upload URLs back from QUBS.
async fn upload(results: &Results, due: &Due) -> Result<(), Step> {
    let entry = &due.entry;
    let files: Vec<ReportAttachmentFile> = due
        .attachments
        .iter()
        .map(|a| ReportAttachmentFile {
            file_name: a.file_name.clone(),
            content_type: a.content_type.clone(),
            size_bytes: a.content.len() as u64,
        })
        .collect();
    let key = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("{}/attachments", entry.idempotency_key).as_bytes(),
    )
    .to_string();
    let uploads = results
        .client
        .register_report_attachments(&entry.domain, &entry.appointment_id, &files, Some(&key))
        .await
        .map_err(|e| classify(&entry.appointment_id, &e))?;
    for (upload, attachment) in uploads.iter().zip(&due.attachments) {
        results
            .client
            .upload_report_attachment(
                upload,
                &attachment.content_type,
                Bytes::from(attachment.content.clone()),
            )
            .await
            .map_err(|e| classify(&entry.appointment_id, &e))?;
    }
    Ok(())
}

/// Sorts a QUBS failure into retry or dead letter (see the module doc).
fn classify(appointment_id: &str, e: &qubs::Error) -> Step {
    let qubs_request_id = e.problem().and_then(|p| p.request_id.clone());
    let dead = |kind, reason| Step::Dead {
        kind,
        reason,
        qubs_request_id: qubs_request_id.clone(),
    };
    match e.status().map(|s| s.as_u16()) {
        Some(404) => dead(
            "not_found",
            format!(
                "appointment {appointment_id} is unknown to QUBS or not pending reporting: {e}"
            ),
        ),
        Some(400 | 409 | 413 | 415 | 422) => dead(
            "rejected",
            format!("QUBS refused the report for appointment {appointment_id}: {e}"),
        ),
        _ => match &e.kind {
            ErrorKind::InvalidRequest(_) => dead(
                "rejected",
                format!("the report for appointment {appointment_id} cannot be sent: {e}"),
            ),
            _ => Step::Retry {
                reason: e.to_string(),
                qubs_request_id: qubs_request_id.clone(),
            },
        },
    }
}
