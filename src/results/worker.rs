//! The outbox worker: submits stored reports to QUBS and settles them.
//!
//! Each due report is mapped again, now in its appointment's site time zone, and POSTed
//! with its stored `Idempotency-Key`. The site comes from the appointment as QUBS last
//! listed it as pending ([`PendingList`]); there is no read of the appointment before the
//! POST unless `qubs.endpoints.appointment` says that undocumented GET exists — the POST's
//! own 404 ("not found or not PENDING REPORTING") is the signal that it cannot be reported.
//! PDFs then follow `results.attachments`: registered and uploaded (`upload`, falling back
//! to a note in the report where QUBS has no report-attachment endpoint), named in a note
//! at the end of the report text (`inline_note`), or left out (`off`).
//!
//! Failures fall in three classes:
//! - **transient** (429, 5xx, 401/403 while credentials are being fixed, connection
//!   errors, a failed read of the pending list): tried again with exponential back-off and
//!   jitter;
//! - **ambiguous** (a timeout or broken connection after the request went out, an
//!   unreadable answer, a 409 soon after — the first attempt still in progress): tried again
//!   the same way — the same key makes QUBS answer with the original report if the first
//!   attempt did land;
//! - **permanent** (400, 404, a 409 that persists, a report too large, a mapping that no
//!   longer maps): the report goes to the dead letters with the reason.
//!
//! Retries stop at the retry horizon, counted from when the report was received; it must
//! stay under the 24 hours QUBS keeps idempotency keys, so a late retry can never store a
//! second report. Reports of one appointment are submitted one at a time, in arrival order
//! (the outbox only hands out the oldest unsettled one); different appointments go in
//! parallel, up to `results.workers`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Results;
use crate::config::AttachmentHandling;
use crate::domain::{MAX_REPORT_TEXT_BYTES, ReportSubmission};
use crate::metrics::Metrics;
use crate::outbox::{Attachment, Due, Receipt, Settled, Source, now_ms};
use crate::pending_list::{PendingList, PendingListError};
use crate::qubs::{self, ErrorKind, ReportAttachmentFile, ReportReceipt};

/// How often the worker looks for due reports when nothing wakes it.
pub(crate) const POLL: Duration = Duration::from_millis(500);

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

/// A 409 to a report whose earlier attempt went unanswered is that attempt still in
/// progress at QUBS; one that persists this long (from the first of a row of 409s) is a
/// real conflict: the key reused with another payload.
const CONFLICT_GRACE: Duration = Duration::from_secs(120);

/// What the worker remembers between attempts (in memory: a restart only costs a warning
/// or a retry again).
struct WorkerState {
    pending: Arc<PendingList>,
    /// When the current row of 409s began, by outbox id.
    conflicts: Mutex<HashMap<i64, Instant>>,
    /// Domains whose QUBS has no report-attachment endpoint.
    no_attachment_endpoint: Mutex<HashSet<String>>,
}

/// Runs until `shutdown`; in-flight submissions are finished first (their reports stay
/// pending if cut short, and are retried with the same key on the next start).
pub async fn run(
    results: Arc<Results>,
    pending: Arc<PendingList>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let workers = results.settings.workers.max(1);
    let state = Arc::new(WorkerState {
        pending,
        conflicts: Mutex::default(),
        no_attachment_endpoint: Mutex::default(),
    });
    let mut running: JoinSet<()> = JoinSet::new();
    // Outbox ids being submitted, by task: a finished (or panicked) task frees its id.
    let mut busy: HashMap<tokio::task::Id, i64> = HashMap::new();
    let mut last_stats = Instant::now() - Duration::from_secs(60);
    let mut store_down = false;
    // Claimed, waiting for a free worker.
    let mut queued: VecDeque<Due> = VecDeque::new();
    loop {
        if last_stats.elapsed() >= Duration::from_secs(2) {
            if let Ok(stats) = results.outbox.stats(false).await {
                metrics.outbox_stats(&stats, now_ms());
            }
            last_stats = Instant::now();
        }
        // A pool's worth is claimed at once, and again only once it is all handed out: one
        // claim per many reports, not one per report (on PostgreSQL each claim is a
        // statement that every replica's workers compete for).
        if queued.is_empty() && busy.len() < workers && !shutdown.is_cancelled() {
            match results.outbox.claim(workers).await {
                Ok(due) => {
                    if store_down {
                        tracing::info!("the outbox answers the worker again");
                        store_down = false;
                    }
                    queued.extend(due);
                }
                // Said once per outage, not every round.
                Err(e) if !store_down => {
                    tracing::error!(error = %e, "outbox unavailable to the worker");
                    store_down = true;
                }
                Err(_) => {}
            }
        }
        while busy.len() < workers {
            let Some(d) = queued.pop_front() else {
                break;
            };
            let id = d.entry.id;
            let (results, metrics, state) = (results.clone(), metrics.clone(), state.clone());
            let task = running.spawn(async move {
                attempt(&results, &metrics, &state, d).await;
            });
            busy.insert(task.id(), id);
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
        if shutdown.is_cancelled() {
            // Claimed but not begun: given back, for another replica to take at once.
            for d in queued.drain(..) {
                results.outbox.release(d.entry.id).await;
            }
            if running.is_empty() {
                return;
            }
        }
    }
}

/// One attempt at one report, and its bookkeeping.
async fn attempt(results: &Results, metrics: &Metrics, state: &WorkerState, due: Due) {
    let entry = due.entry.clone();
    let claimed_at_ms = due.claimed_at_ms;
    let started = Instant::now();
    let step = submit(results, state, due).await;
    let step = judge_conflict(state, entry.id, step);
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
            let delay = crate::backoff::Backoff::from_millis(s.retry_initial_ms, s.retry_max_ms)
                .delay(entry.attempts)
                .as_millis() as i64;
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

/// A 409 is retried while it may be an earlier attempt still in progress (see
/// [`CONFLICT_GRACE`]); any other answer ends the row.
fn judge_conflict(state: &WorkerState, id: i64, step: Step) -> Step {
    let mut conflicts = state.conflicts.lock().expect("conflicts");
    match step {
        Step::Dead {
            kind: "conflict",
            reason,
            qubs_request_id,
        } => {
            let since = *conflicts.entry(id).or_insert_with(Instant::now);
            if since.elapsed() < CONFLICT_GRACE {
                Step::Retry {
                    reason: format!("{reason} (an earlier attempt may still be in progress)"),
                    qubs_request_id,
                }
            } else {
                conflicts.remove(&id);
                Step::Dead {
                    kind: "rejected",
                    reason,
                    qubs_request_id,
                }
            }
        }
        other => {
            conflicts.remove(&id);
            other
        }
    }
}

async fn submit(results: &Results, state: &WorkerState, due: Due) -> Step {
    let entry = &due.entry;
    let report = match build(results, state, &due).await {
        Ok(r) => r,
        Err(step) => return step,
    };
    let handling = results.settings.attachments;
    let pdfs = &due.attachments;
    let noted;
    let first = if handling == AttachmentHandling::InlineNote && !pdfs.is_empty() {
        noted = with_note(&report, pdfs);
        &noted
    } else {
        &report
    };
    let receipt = match results
        .client
        .submit_report(&entry.domain, first, Some(&entry.idempotency_key))
        .await
    {
        Ok(r) => r,
        Err(e) => return classify(&entry.appointment_id, &e),
    };
    let receipt = match handling {
        _ if pdfs.is_empty() => receipt,
        AttachmentHandling::InlineNote => receipt,
        AttachmentHandling::Off => {
            tracing::info!(
                outbox_id = entry.id,
                appointment_id = %entry.appointment_id,
                pdfs = pdfs.len(),
                "the result's PDFs were not sent (results.attachments = off)"
            );
            receipt
        }
        AttachmentHandling::Upload => match upload_or_note(results, state, &due, &report).await {
            Ok(Some(noted)) => noted,
            Ok(None) => receipt,
            Err(step) => return step,
        },
    };
    Step::Submitted(Receipt {
        report_guid: receipt.report_guid,
        report_status: receipt.report_status,
        reported_at_utc: receipt.reported_at_utc,
    })
}

/// `report` with a last paragraph naming the PDFs that did not go to QUBS as files, so the
/// report's reader knows they exist. Always the same text for the same PDFs (the
/// submission's key depends on it); left out if the report would grow past QUBS's limit.
fn with_note(report: &ReportSubmission, pdfs: &[Attachment]) -> ReportSubmission {
    let names: Vec<String> = pdfs
        .iter()
        .map(|a| {
            format!(
                "{} ({}, {} bytes)",
                a.file_name,
                a.content_type,
                a.content.len()
            )
        })
        .collect();
    let note = format!("\n\n[Not attached in QUBS: {}]", names.join("; "));
    let mut noted = report.clone();
    if report.report_text.len() + note.len() <= MAX_REPORT_TEXT_BYTES {
        noted.report_text.push_str(&note);
    } else {
        tracing::warn!(
            appointment_id = %report.appointment_id,
            "no room in the report text to name its PDFs; sent without the note"
        );
    }
    noted
}

/// The submission, mapped from the stored input in the appointment's site time zone.
async fn build(
    results: &Results,
    state: &WorkerState,
    due: &Due,
) -> Result<ReportSubmission, Step> {
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
            let (site, listed) =
                site_of(results, state, &entry.domain, &entry.appointment_id).await?;
            let ctx = results.context(&entry.domain, site);
            let set = results.mappings.current();
            let inbound = if due.source == Source::Hl7 {
                set.map_oru(&String::from_utf8_lossy(&due.body), &ctx)
            } else {
                let value: Value = serde_json::from_slice(&due.body)
                    .map_err(|e| mapping_dead(format!("stored report is unreadable: {e}")))?;
                set.map_diagnostic_report(&value, &ctx)
            }
            .map_err(|e| match listed {
                // Not listed, so most likely not pending reporting (QUBS would answer 404),
                // and its site is unknown. Intake mapped the result already (in UTC): what
                // fails now is a local time without a zone.
                false => Step::Dead {
                    kind: "not_found",
                    reason: format!(
                        "appointment {} is unknown to QUBS or not pending reporting: it is not in QUBS's pending reporting list, whose listing gives the site time zone the result's local times need (qubs.default_time_zone would stand in)",
                        entry.appointment_id
                    ),
                    qubs_request_id: None,
                },
                true => mapping_dead(format!(
                    "the stored result no longer maps with mapping set {}: {e}",
                    set.version()
                )),
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

/// The site settings of an appointment (`null` when no source knows its time zone), and
/// whether QUBS lists the appointment as pending.
async fn site_of(
    results: &Results,
    state: &WorkerState,
    domain: &str,
    appointment_id: &str,
) -> Result<(Value, bool), Step> {
    let listed = match state.pending.site_of(domain, appointment_id).await {
        Ok(listed) => listed,
        Err(PendingListError::Qubs(e)) => {
            return Err(Step::Retry {
                reason: format!(
                    "reading QUBS's pending list for appointment {appointment_id} failed: {e}"
                ),
                qubs_request_id: e.problem().and_then(|p| p.request_id.clone()),
            });
        }
        Err(PendingListError::Store(e)) => {
            return Err(Step::Retry {
                reason: format!(
                    "reading the stored pending list for appointment {appointment_id} failed: {e}"
                ),
                qubs_request_id: None,
            });
        }
    };
    let (site, listed) = match listed {
        Some(site) => (site, true),
        None if results.client.has_appointment_endpoint() => {
            // Not listed; the (configured) single-appointment GET says why.
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
            (appointment.scheduled_site().map(str::to_string), true)
        }
        // Not listed as pending: QUBS will most likely refuse the report (404), which
        // settles it. Until then the domain's default time zone, if any, stands in.
        None => (None, false),
    };
    match results.client.site_for(domain, site.as_deref()).await {
        Ok(Some(s)) => Ok((serde_json::to_value(s).unwrap_or(Value::Null), listed)),
        Ok(None) => Ok((Value::Null, listed)),
        Err(e) => Err(Step::Retry {
            reason: format!(
                "reading the site of appointment {appointment_id} from QUBS failed: {e}"
            ),
            qubs_request_id: e.problem().and_then(|p| p.request_id.clone()),
        }),
    }
}

/// `upload`: registers and uploads the report's PDFs. Where QUBS has no report-attachment
/// endpoint, the report is submitted again with a note naming them, under a key of its own
/// (the first submission's key stays tied to its payload); that noted receipt is answered.
async fn upload_or_note(
    results: &Results,
    state: &WorkerState,
    due: &Due,
    report: &ReportSubmission,
) -> Result<Option<ReportReceipt>, Step> {
    let entry = &due.entry;
    let known_missing = state
        .no_attachment_endpoint
        .lock()
        .expect("attachment endpoints")
        .contains(&entry.domain);
    if !known_missing {
        match upload(results, due).await {
            Ok(()) => return Ok(None),
            // The registration is the endpoint in question; a refused upload is not.
            Err(e)
                if e.operation == qubs::client::REGISTER_REPORT_ATTACHMENTS
                    && endpoint_missing(&e) => {}
            Err(e) => return Err(classify(&entry.appointment_id, &e)),
        }
    }
    let key = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("{}/inline-note", entry.idempotency_key).as_bytes(),
    )
    .to_string();
    let noted = with_note(report, &due.attachments);
    match results
        .client
        .submit_report(&entry.domain, &noted, Some(&key))
        .await
    {
        Ok(receipt) => {
            // The report was just accepted, so the 404 was the endpoint's, not the
            // appointment's.
            if state
                .no_attachment_endpoint
                .lock()
                .expect("attachment endpoints")
                .insert(entry.domain.clone())
            {
                tracing::warn!(
                    domain = %entry.domain,
                    "QUBS has no report-attachment endpoint here; PDFs are named in the report text instead (results.attachments = inline_note says so up front)"
                );
            }
            Ok(Some(receipt))
        }
        Err(e) if e.is_not_found() => {
            // The appointment left PENDING REPORTING after the report went in.
            tracing::warn!(
                outbox_id = entry.id,
                appointment_id = %entry.appointment_id,
                "the report is in QUBS, but neither its PDFs nor a note naming them could follow"
            );
            Ok(None)
        }
        Err(e) => Err(classify(&entry.appointment_id, &e)),
    }
}

/// Whether a report-attachment call says the endpoint is not there.
fn endpoint_missing(e: &qubs::Error) -> bool {
    matches!(e.status().map(|s| s.as_u16()), Some(404 | 405 | 501))
}

/// Registers and uploads the report's PDFs. Registration carries a key derived from the
/// report's, so a repeated attempt gets the same upload URLs back from QUBS.
async fn upload(results: &Results, due: &Due) -> Result<(), qubs::Error> {
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
        .await?;
    for (upload, attachment) in uploads.iter().zip(&due.attachments) {
        results
            .client
            .upload_report_attachment(
                upload,
                &attachment.content_type,
                Bytes::from(attachment.content.clone()),
            )
            .await?;
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
        // Judged by `judge_conflict`: in progress, or a real conflict.
        Some(409) => dead(
            "conflict",
            format!("QUBS refused the report for appointment {appointment_id}: {e}"),
        ),
        Some(400 | 413 | 415 | 422) => dead(
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
