//! `OutboxService`: the operators' view of the durable outbox.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Context;
use super::auth::Caller;
use super::pb::{self, outbox_service_server::OutboxService};
use crate::outbox::{DeadLetters, Entry, EntryFilter, RetryError, State, now_ms};

pub struct OutboxApi {
    ctx: Arc<Context>,
}

impl OutboxApi {
    pub fn new(ctx: Arc<Context>) -> OutboxApi {
        OutboxApi { ctx }
    }
}

/// A store time (Unix milliseconds) as RFC 3339 UTC.
pub(super) fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn entry(e: &Entry) -> pb::OutboxEntry {
    let receipt = e.receipt.as_ref();
    pb::OutboxEntry {
        id: e.id,
        domain: e.domain.clone(),
        appointment_id: e.appointment_id.clone(),
        source: e.source.as_str().into(),
        source_id: e.source_id.clone(),
        group: e.group,
        report_status: e.report_status.clone(),
        state: e.state.as_str().into(),
        attempts: e.attempts,
        received_at: time(e.received_at_ms),
        first_attempt_at: e.first_attempt_at_ms.map(time).unwrap_or_default(),
        next_attempt_at: if e.state == State::Pending {
            time(e.next_attempt_at_ms)
        } else {
            String::new()
        },
        updated_at: time(e.updated_at_ms),
        last_error: e.last_error.clone().unwrap_or_default(),
        error_kind: e.error_kind.clone().unwrap_or_default(),
        qubs_request_id: e.qubs_request_id.clone().unwrap_or_default(),
        report_guid: receipt.map(|r| r.report_guid.clone()).unwrap_or_default(),
        qubs_report_status: receipt
            .and_then(|r| r.report_status.clone())
            .unwrap_or_default(),
        attachments: e.attachments,
        idempotency_key: e.idempotency_key.clone(),
    }
}

fn state(s: &str) -> Result<Option<State>, Status> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "pending" => Ok(Some(State::Pending)),
        "submitted" => Ok(Some(State::Submitted)),
        "dead" => Ok(Some(State::Dead)),
        other => Err(Status::invalid_argument(format!(
            "state `{other}` is not one of pending, submitted, dead"
        ))),
    }
}

/// The domains a request is about: the one asked for (if allowed), else all allowed.
fn domains(who: &Caller, domain: &str) -> Result<Vec<String>, Status> {
    if domain.is_empty() {
        Ok(who.domains())
    } else {
        who.authorize(domain)?;
        Ok(vec![domain.to_string()])
    }
}

fn storage(e: crate::outbox::OutboxError) -> Status {
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl OutboxService for OutboxApi {
    async fn list_outbox(
        &self,
        request: Request<pb::ListOutboxRequest>,
    ) -> Result<Response<pb::ListOutboxResponse>, Status> {
        self.ctx
            .call("ListOutbox", request, |who, req| async move {
                let outbox = &self.ctx.results.outbox;
                let filter = EntryFilter {
                    state: state(&req.state)?,
                    domains: domains(&who, &req.domain)?,
                    appointment_id: (!req.appointment_id.is_empty())
                        .then(|| req.appointment_id.clone()),
                    after_id: req.after_id,
                    limit: match req.limit {
                        0 => 100,
                        n => n.min(1000) as usize,
                    },
                    ..Default::default()
                };
                let entries = outbox.list(filter).await.map_err(storage)?;
                let stats = outbox.stats(true).await.map_err(storage)?;
                Ok(Response::new(pb::ListOutboxResponse {
                    entries: entries.iter().map(entry).collect(),
                    pending: stats.pending,
                    submitted: stats.submitted.unwrap_or_default(),
                    dead: stats.dead,
                    oldest_pending_seconds: stats.oldest_pending_age_secs(now_ms()),
                }))
            })
            .await
    }

    async fn get_outbox_entry(
        &self,
        request: Request<pb::GetOutboxEntryRequest>,
    ) -> Result<Response<pb::OutboxEntry>, Status> {
        self.ctx
            .call("GetOutboxEntry", request, |who, req| async move {
                let found = self
                    .ctx
                    .results
                    .outbox
                    .entry(req.id)
                    .await
                    .map_err(storage)?
                    .ok_or_else(|| Status::not_found(format!("no outbox entry {}", req.id)))?;
                who.authorize(&found.domain)?;
                Ok(Response::new(entry(&found)))
            })
            .await
    }

    async fn retry_outbox(
        &self,
        request: Request<pb::RetryOutboxRequest>,
    ) -> Result<Response<pb::RetryOutboxResponse>, Status> {
        self.ctx
            .call("RetryOutbox", request, |who, req| async move {
                let allowed = domains(&who, &req.domain)?;
                // Entries asked for by id may be of any of the caller's domains.
                let (which, scope) = if req.all_dead {
                    (DeadLetters::All, allowed)
                } else if req.ids.is_empty() {
                    return Err(Status::invalid_argument("give entry ids, or all_dead"));
                } else {
                    (DeadLetters::Ids(req.ids.clone()), who.domains())
                };
                let requeued = self
                    .ctx
                    .results
                    .outbox
                    .retry(which, &scope)
                    .await
                    .map_err(|e| match e {
                        RetryError::Storage(e) => storage(e),
                        RetryError::OtherDomain { domain, .. } => who
                            .authorize(&domain)
                            .err()
                            .unwrap_or_else(|| Status::permission_denied(domain)),
                    })?;
                tracing::info!(caller = %who.name, requeued, "dead letters requeued");
                Ok(Response::new(pb::RetryOutboxResponse {
                    requeued: requeued as u32,
                }))
            })
            .await
    }

    async fn purge_outbox(
        &self,
        request: Request<pb::PurgeOutboxRequest>,
    ) -> Result<Response<pb::PurgeOutboxResponse>, Status> {
        self.ctx
            .call("PurgeOutbox", request, |who, req| async move {
                // The caller's domains first, as every call does, then the request.
                let domains = domains(&who, &req.domain)?;
                let which = match state(&req.state)? {
                    Some(s @ (State::Submitted | State::Dead)) => s,
                    _ => {
                        return Err(Status::invalid_argument(
                            "state must be `submitted` or `dead`; pending entries are never purged",
                        ));
                    }
                };
                let older_than =
                    std::time::Duration::from_secs(req.older_than_secs.min(i64::MAX as u64 / 1000));
                let purged = self
                    .ctx
                    .results
                    .outbox
                    .purge(which, older_than, domains)
                    .await
                    .map_err(storage)?;
                tracing::info!(caller = %who.name, purged, state = which.as_str(), "outbox purged");
                Ok(Response::new(pb::PurgeOutboxResponse {
                    purged: purged as u32,
                }))
            })
            .await
    }
}
