//! Outcomes of submission attempts on PostgreSQL, recorded in groups (see
//! [`super::group`]): one statement for everything queued, whichever way each ended. A row
//! is only written while the claim that attempted it still holds (its token); a result
//! someone waits for (`awaited`) notifies the replicas that it has settled.

use std::collections::HashSet;
use std::sync::Arc;

use super::group::Work;
use crate::outbox::{OutboxError, Settled};
use crate::store::postgres::{OUTBOX_CHANNEL, Postgres};

/// The most outcomes recorded in one statement.
pub(super) const MAX_GROUP: usize = 128;

/// One attempt's outcome, under the claim `token` it was made with.
pub(super) struct Settle {
    pub(super) id: i64,
    pub(super) token: Option<i64>,
    pub(super) settled: Settled,
}

/// Outcomes, recorded in groups; each one's output says whether its claim still held.
pub(super) struct Settles(pub(super) Arc<Postgres>);

#[async_trait::async_trait]
impl Work for Settles {
    type Item = Settle;
    type Output = bool;
    async fn run(&self, items: &[&Settle]) -> Result<Vec<bool>, OutboxError> {
        let pg = &self.0;
        let fail = |e| pg.failed("settle", e);
        let mut submitted = Submitted::default();
        let mut dead = Dead::default();
        for s in items {
            match &s.settled {
                Settled::Submitted(r) => {
                    submitted.id.push(s.id);
                    submitted.token.push(s.token);
                    submitted.guid.push(r.report_guid.as_str());
                    submitted.status.push(r.report_status.as_deref());
                    submitted.at.push(r.reported_at_utc.as_deref());
                }
                Settled::Dead {
                    kind,
                    reason,
                    qubs_request_id,
                } => {
                    dead.id.push(s.id);
                    dead.token.push(s.token);
                    dead.kind.push(kind.as_str());
                    dead.reason.push(reason.as_str());
                    dead.request.push(qubs_request_id.as_deref());
                }
            }
        }
        let client = pg.client("settle").await?;
        // Both kinds in one statement: one commit for the group.
        let rows = client
            .query(
                &client
                    .prepare_cached(&format!(
                        "WITH submitted AS (
                             UPDATE outbox_results r SET state = 'submitted',
                                 attempts = attempts + 1, updated_at = bridge_now_ms(),
                                 first_attempt_at = COALESCE(first_attempt_at, bridge_now_ms()),
                                 last_error = NULL, error_kind = NULL, report_guid = x.guid,
                                 qubs_report_status = x.status, reported_at_utc = x.at,
                                 claimed_by = NULL, claim_token = NULL, lease_until = NULL
                             FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[])
                                  AS x(id, token, guid, status, at)
                             WHERE r.id = x.id AND r.state = 'pending'
                               AND r.claim_token IS NOT DISTINCT FROM x.token
                             RETURNING r.id, r.awaited),
                         dead AS (
                             UPDATE outbox_results r SET state = 'dead',
                                 attempts = attempts + 1, updated_at = bridge_now_ms(),
                                 first_attempt_at = COALESCE(first_attempt_at, bridge_now_ms()),
                                 last_error = x.reason, error_kind = x.kind,
                                 qubs_request_id = x.request,
                                 claimed_by = NULL, claim_token = NULL, lease_until = NULL
                             FROM unnest($6::int8[], $7::int8[], $8::text[], $9::text[], $10::text[])
                                  AS x(id, token, kind, reason, request)
                             WHERE r.id = x.id AND r.state = 'pending'
                               AND r.claim_token IS NOT DISTINCT FROM x.token
                             RETURNING r.id, r.awaited),
                         s AS (SELECT * FROM submitted UNION ALL SELECT * FROM dead)
                         SELECT s.id, CASE WHEN s.awaited
                             THEN pg_notify('{OUTBOX_CHANNEL}', 'settled:' || s.id)::text END
                         FROM s"
                    ))
                    .await
                    .map_err(fail)?,
                &[
                    &submitted.id,
                    &submitted.token,
                    &submitted.guid,
                    &submitted.status,
                    &submitted.at,
                    &dead.id,
                    &dead.token,
                    &dead.kind,
                    &dead.reason,
                    &dead.request,
                ],
            )
            .await
            .map_err(fail)?;
        let held: HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        Ok(items.iter().map(|s| held.contains(&s.id)).collect())
    }
}

#[derive(Default)]
struct Submitted<'a> {
    id: Vec<i64>,
    token: Vec<Option<i64>>,
    guid: Vec<&'a str>,
    status: Vec<Option<&'a str>>,
    at: Vec<Option<&'a str>>,
}

#[derive(Default)]
struct Dead<'a> {
    id: Vec<i64>,
    token: Vec<Option<i64>>,
    kind: Vec<&'a str>,
    reason: Vec<&'a str>,
    request: Vec<Option<&'a str>>,
}
