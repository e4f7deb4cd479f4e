//! The outbox on PostgreSQL, shared by several replicas.
//!
//! - **Intake.** A message's results are stored in a transaction (shared with the other
//!   messages queued at that moment, see [`admit`]) that first takes a transaction-level
//!   advisory lock per appointment: admissions for one appointment take turns, so their ids
//!   grow in commit order (the claim below relies on it), a retransmission arriving at two
//!   replicas at once is stored once, and the "preliminary after final" check sees every
//!   committed final.
//! - **Claims.** Due results are claimed with `FOR UPDATE SKIP LOCKED`: each gets this
//!   replica's id, a fresh claim token and a lease (`store.lease_secs`, by the database
//!   clock). The lease is renewed every third of its length while the attempt runs; a
//!   replica that dies stops renewing, and once the lease has run out another replica claims
//!   the result and submits it with the same `Idempotency-Key` (QUBS answers with the first
//!   report). Settling or rescheduling checks the claim token, so a replica whose claim was
//!   taken over records nothing. A result is never claimed while an older result of its
//!   appointment is pending, so reports reach QUBS in arrival order across replicas.
//! - **Waiting for an outcome.** Settling a result someone waits for (`awaited`) sends a
//!   notification, so that the replica holding the sender's connection answers at once.
//!   Nothing else notifies: the hot path stays free of `NOTIFY`'s commit-time lock.
//! - **Small hot indexes.** Pending results are found through partial indexes; settled rows
//!   stay out of them until `outbox purge` deletes them.

mod admit;
mod group;
mod settle;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{
    Admission, Attachment, Due, Entry, EntryFilter, NewMessage, OutboxError, OutboxStore, Receipt,
    Settled, Source, State, Stats,
};
use crate::store::StoreError;
use crate::store::migrate::Migration;
use crate::store::postgres::{OUTBOX_CHANNEL, Postgres, query_queue_head};
use admit::Admissions;
use group::Grouped;
use settle::Settles;

pub(super) static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "messages, results with claims and leases, attachments",
        sql: "
CREATE TABLE outbox_messages (
    id           BIGSERIAL PRIMARY KEY,
    source       TEXT    NOT NULL,
    body         BYTEA   NOT NULL,
    received_at  BIGINT  NOT NULL
);
CREATE TABLE outbox_results (
    id                 BIGSERIAL PRIMARY KEY,
    idempotency_key    TEXT    NOT NULL UNIQUE,
    message_id         BIGINT  NOT NULL REFERENCES outbox_messages(id),
    domain             TEXT    NOT NULL,
    appointment_id     TEXT    NOT NULL,
    source_id          TEXT    NOT NULL,
    group_index        INTEGER NOT NULL,
    report_status      TEXT    NOT NULL,
    state              TEXT    NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    received_at        BIGINT  NOT NULL,
    first_attempt_at   BIGINT,
    next_attempt_at    BIGINT  NOT NULL,
    updated_at         BIGINT  NOT NULL,
    last_error         TEXT,
    error_kind         TEXT,
    qubs_request_id    TEXT,
    report_guid        TEXT,
    qubs_report_status TEXT,
    reported_at_utc    TEXT,
    awaited            BOOLEAN NOT NULL DEFAULT false,
    claimed_by         TEXT,
    claim_token        BIGINT,
    lease_until        BIGINT
);
CREATE SEQUENCE outbox_claim_tokens;
CREATE INDEX outbox_results_pending ON outbox_results (id) WHERE state = 'pending';
CREATE INDEX outbox_results_pending_appointment ON outbox_results (domain, appointment_id, id)
    WHERE state = 'pending';
CREATE INDEX outbox_results_state ON outbox_results (state, id);
CREATE INDEX outbox_results_appointment ON outbox_results (domain, appointment_id, id);
CREATE INDEX outbox_results_message ON outbox_results (message_id);
CREATE TABLE outbox_attachments (
    result_id     BIGINT  NOT NULL REFERENCES outbox_results(id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    file_name     TEXT    NOT NULL,
    content_type  TEXT    NOT NULL,
    content       BYTEA   NOT NULL,
    PRIMARY KEY (result_id, seq)
);
",
    },
    Migration {
        version: 2,
        description: "results by their input's id (search by MSH-10)",
        sql: "CREATE INDEX IF NOT EXISTS outbox_results_source ON outbox_results (source_id);",
    },
    Migration {
        version: 3,
        description: "the replica whose attempt last failed, which yields the retry to the others",
        sql: "ALTER TABLE outbox_results ADD COLUMN IF NOT EXISTS last_failed_by TEXT;",
    },
];

/// How long a replica whose own attempt failed leaves the retry to the other replicas
/// once it is due: two of their polls. A replica that cannot reach QUBS would otherwise
/// keep taking the report back, its polls in step with the retry, while a healthy
/// replica never gets a turn.
fn yield_after_failure_ms() -> i64 {
    (crate::results::worker::POLL * 2).as_millis() as i64
}

/// The two-key advisory lock space of per-appointment admission locks ("QUBS").
const ADMISSION_LOCKS: i32 = 0x5155_4253;

/// Claims this replica holds: result id → claim token.
type Claims = Mutex<HashMap<i64, i64>>;

pub(super) struct PgOutbox {
    pg: Arc<Postgres>,
    claims: Arc<Claims>,
    admissions: Grouped<Admissions>,
    settles: Grouped<Settles>,
}

/// How many groups of each kind one replica may be writing at once.
const LANES: usize = 2;

impl PgOutbox {
    pub(super) fn new(pg: Arc<Postgres>) -> PgOutbox {
        let claims: Arc<Claims> = Arc::default();
        tokio::spawn(renew_claims(pg.clone(), Arc::downgrade(&claims)));
        PgOutbox {
            admissions: Grouped::start(Admissions(pg.clone()), LANES, admit::MAX_GROUP),
            settles: Grouped::start(Settles(pg.clone()), LANES, settle::MAX_GROUP),
            pg,
            claims,
        }
    }

    fn token(&self, id: i64) -> Option<i64> {
        self.claims.lock().expect("claims").get(&id).copied()
    }

    fn unclaim(&self, id: i64) {
        self.claims.lock().expect("claims").remove(&id);
    }

    fn lease_ms(&self) -> i64 {
        self.pg.lease().as_millis() as i64
    }
}

/// Renews the leases of this replica's claims every third of the lease, for as long as the
/// outbox exists.
async fn renew_claims(pg: Arc<Postgres>, claims: Weak<Claims>) {
    let every = pg.lease() / 3;
    let lease_ms = pg.lease().as_millis() as i64;
    loop {
        tokio::time::sleep(every).await;
        let Some(claims) = claims.upgrade() else {
            return;
        };
        let (ids, tokens): (Vec<i64>, Vec<i64>) = claims
            .lock()
            .expect("claims")
            .iter()
            .map(|(id, token)| (*id, *token))
            .unzip();
        drop(claims);
        if ids.is_empty() {
            continue;
        }
        let renewed = async {
            let client = pg.client("claim").await?;
            client
                .execute(
                    "UPDATE outbox_results r SET lease_until = bridge_now_ms() + $3
                     FROM unnest($1::int8[], $2::int8[]) AS c(id, token)
                     WHERE r.id = c.id AND r.claim_token = c.token AND r.state = 'pending'",
                    &[&ids, &tokens, &lease_ms],
                )
                .await
                .map_err(|e| pg.failed("claim", e))
        }
        .await;
        if let Err(e) = renewed {
            tracing::warn!(error = %e, claims = ids.len(), "could not renew outbox claims; another replica takes them over if this lasts beyond the lease");
        }
    }
}

const ENTRY_COLUMNS: &str = "r.id, r.idempotency_key, r.domain, r.appointment_id, m.source,
    r.source_id, r.group_index, r.report_status, r.state, r.attempts, r.received_at,
    r.first_attempt_at, r.next_attempt_at, r.updated_at, r.last_error, r.error_kind,
    r.qubs_request_id, r.report_guid, r.qubs_report_status, r.reported_at_utc,
    (SELECT COUNT(*) FROM outbox_attachments a WHERE a.result_id = r.id)";

fn read_entry(row: &Row) -> Entry {
    Entry {
        id: row.get(0),
        idempotency_key: row.get(1),
        domain: row.get(2),
        appointment_id: row.get(3),
        source: Source::parse(row.get(4)),
        source_id: row.get(5),
        group: row.get::<_, i32>(6) as u32,
        report_status: row.get(7),
        state: State::parse(row.get(8)),
        attempts: row.get::<_, i32>(9) as u32,
        received_at_ms: row.get(10),
        first_attempt_at_ms: row.get(11),
        next_attempt_at_ms: row.get(12),
        updated_at_ms: row.get(13),
        last_error: row.get(14),
        error_kind: row.get(15),
        qubs_request_id: row.get(16),
        receipt: row.get::<_, Option<String>>(17).map(|report_guid| Receipt {
            report_guid,
            report_status: row.get(18),
            reported_at_utc: row.get(19),
        }),
        attachments: row.get::<_, i64>(20) as u32,
    }
}

#[async_trait::async_trait]
impl OutboxStore for PgOutbox {
    async fn admit(&self, m: NewMessage) -> Result<Admission, OutboxError> {
        self.admissions.write(m).await
    }

    async fn claim(&self, limit: usize) -> Result<Vec<Due>, OutboxError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("claim", e);
        let mut client = pg.client("claim").await?;
        // The claim returns what the attempt needs: one statement, and a second read only
        // for results with attachments.
        let sql = format!(
            "WITH t AS (SELECT bridge_now_ms() AS now),
             picked AS (
                 SELECT r.id, r.claimed_by FROM outbox_results r, t
                 WHERE r.state = 'pending' AND r.next_attempt_at <= t.now
                   AND (r.lease_until IS NULL OR r.lease_until <= t.now)
                   AND (r.last_failed_by IS DISTINCT FROM $2
                        OR r.next_attempt_at + $4 <= t.now)
                   AND r.id = (
                       SELECT min(p.id) FROM outbox_results p
                       WHERE p.domain = r.domain AND p.appointment_id = r.appointment_id
                         AND p.state = 'pending')
                 ORDER BY r.id LIMIT $1
                 FOR UPDATE OF r SKIP LOCKED)
             UPDATE outbox_results r
             SET claimed_by = $2, claim_token = nextval('outbox_claim_tokens'),
                 lease_until = t.now + $3
             FROM picked, t, outbox_messages m
             WHERE r.id = picked.id AND m.id = r.message_id
             RETURNING {ENTRY_COLUMNS}, m.body, r.claim_token, picked.claimed_by, t.now"
        );
        let (limit, lease, yield_after) = (limit as i64, self.lease_ms(), yield_after_failure_ms());
        let rows = query_queue_head(
            &mut client,
            &sql,
            &[&limit, &pg.replica().id, &lease, &yield_after],
        )
        .await
        .map_err(fail)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut now = 0;
        let mut with_attachments = Vec::new();
        {
            let mut claims = self.claims.lock().expect("claims");
            for row in &rows {
                let (id, token): (i64, i64) = (row.get(0), row.get(22));
                if row.get::<_, Option<String>>(23).is_some() {
                    pg.metrics.takeover("outbox_claim");
                    tracing::info!(outbox_id = id, "took over a result whose claim had run out");
                }
                now = row.get(24);
                claims.insert(id, token);
                if row.get::<_, i64>(20) > 0 {
                    with_attachments.push(id);
                }
            }
        }
        let mut attachments: HashMap<i64, Vec<Attachment>> = HashMap::new();
        if !with_attachments.is_empty() {
            for row in client
            .query(
                &client
                    .prepare_cached(
                        "SELECT result_id, file_name, content_type, content FROM outbox_attachments
                         WHERE result_id = ANY($1) ORDER BY result_id, seq",
                    )
                    .await
                    .map_err(fail)?,
                &[&with_attachments],
            )
            .await
            .map_err(fail)?
            {
                attachments.entry(row.get(0)).or_default().push(Attachment {
                    file_name: row.get(1),
                    content_type: row.get(2),
                    content: row.get(3),
                });
            }
        }
        let mut due: Vec<Due> = rows
            .iter()
            .map(|row| {
                let entry = read_entry(row);
                Due {
                    source: entry.source,
                    attachments: attachments.remove(&entry.id).unwrap_or_default(),
                    entry,
                    body: row.get(21),
                    claimed_at_ms: now,
                }
            })
            .collect();
        due.sort_by_key(|d| d.entry.id);
        Ok(due)
    }

    async fn release(&self, id: i64) {
        let Some(token) = self.token(id) else {
            return;
        };
        self.unclaim(id);
        if let Ok(client) = self.pg.client("claim").await {
            let _ = client
                .execute(
                    "UPDATE outbox_results SET claimed_by = NULL, claim_token = NULL,
                         lease_until = NULL
                     WHERE id = $1 AND claim_token = $2",
                    &[&id, &token],
                )
                .await;
        }
    }

    async fn settle(&self, id: i64, settled: &Settled) -> Result<(), OutboxError> {
        let token = self.token(id);
        // Whatever happens now, this replica stops renewing the claim.
        self.unclaim(id);
        let held = self
            .settles
            .write(settle::Settle {
                id,
                token,
                settled: settled.clone(),
            })
            .await?;
        if !held {
            return Err(StoreError::ClaimLost(id));
        }
        Ok(())
    }

    async fn retry_later(
        &self,
        id: i64,
        delay: Duration,
        reason: &str,
        qubs_request_id: Option<&str>,
    ) -> Result<(), OutboxError> {
        let token = self.token(id);
        self.unclaim(id);
        let pg = &self.pg;
        let fail = |e| pg.failed("retry", e);
        let client = pg.client("retry").await?;
        let n = client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE outbox_results SET attempts = attempts + 1,
                             next_attempt_at = bridge_now_ms() + $2, updated_at = bridge_now_ms(),
                             first_attempt_at = COALESCE(first_attempt_at, bridge_now_ms()),
                             last_error = $3, error_kind = 'transient', qubs_request_id = $4,
                             claimed_by = NULL, claim_token = NULL, lease_until = NULL,
                             last_failed_by = $6
                         WHERE id = $1 AND state = 'pending' AND claim_token IS NOT DISTINCT FROM $5",
                    )
                    .await
                    .map_err(fail)?,
                &[
                    &id,
                    &(delay.as_millis() as i64),
                    &reason,
                    &qubs_request_id,
                    &token,
                    &pg.replica().id,
                ],
            )
            .await
            .map_err(fail)?;
        if n == 0 {
            return Err(StoreError::ClaimLost(id));
        }
        Ok(())
    }

    async fn entries(&self, ids: &[i64]) -> Result<Vec<Entry>, OutboxError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("read", e);
        let client = pg.client("read").await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(&format!(
                        "SELECT {ENTRY_COLUMNS} FROM outbox_results r
                         JOIN outbox_messages m ON m.id = r.message_id WHERE r.id = ANY($1)"
                    ))
                    .await
                    .map_err(fail)?,
                &[&ids],
            )
            .await
            .map_err(fail)?;
        let mut by_id: HashMap<i64, Entry> =
            rows.iter().map(read_entry).map(|e| (e.id, e)).collect();
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    async fn message(&self, id: i64) -> Result<Option<(Source, Vec<u8>)>, OutboxError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("read", e);
        let client = pg.client("read").await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT m.source, m.body FROM outbox_messages m
                         JOIN outbox_results r ON r.message_id = m.id WHERE r.id = $1",
                    )
                    .await
                    .map_err(fail)?,
                &[&id],
            )
            .await
            .map_err(fail)?;
        Ok(row.map(|r| (Source::parse(r.get::<_, &str>(0)), r.get(1))))
    }

    async fn list(&self, f: &EntryFilter) -> Result<Vec<Entry>, OutboxError> {
        let pg = &self.pg;
        let client = pg.client("read").await?;
        let mut sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM outbox_results r JOIN outbox_messages m
             ON m.id = r.message_id WHERE r.id > $1"
        );
        let state = f.state.map(|s| s.as_str());
        let limit = f.limit.max(1) as i64;
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&f.after_id];
        if let Some(state) = &state {
            args.push(state);
            sql.push_str(&format!(" AND r.state = ${}", args.len()));
        }
        if !f.domains.is_empty() {
            args.push(&f.domains);
            sql.push_str(&format!(" AND r.domain = ANY(${})", args.len()));
        }
        if let Some(a) = &f.appointment_id {
            args.push(a);
            sql.push_str(&format!(" AND r.appointment_id = ${}", args.len()));
        }
        if let Some(id) = &f.source_id {
            args.push(id);
            sql.push_str(&format!(" AND r.source_id = ${}", args.len()));
        }
        if let Some(before) = &f.before_id {
            args.push(before);
            sql.push_str(&format!(" AND r.id < ${}", args.len()));
        }
        args.push(&limit);
        let order = if f.newest_first { "DESC" } else { "ASC" };
        sql.push_str(&format!(" ORDER BY r.id {order} LIMIT ${}", args.len()));
        let rows = client
            .query(&sql, &args)
            .await
            .map_err(|e| pg.failed("read", e))?;
        Ok(rows.iter().map(read_entry).collect())
    }

    async fn requeue(&self, ids: &[i64]) -> Result<usize, OutboxError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("requeue", e);
        let mut client = pg.client("requeue").await?;
        let tx = client.transaction().await.map_err(fail)?;
        let n = tx
            .execute(
                "UPDATE outbox_results SET state = 'pending', next_attempt_at = bridge_now_ms(),
                     updated_at = bridge_now_ms(), first_attempt_at = NULL, error_kind = NULL,
                     claimed_by = NULL, claim_token = NULL, lease_until = NULL
                 WHERE id = ANY($1) AND state = 'dead'",
                &[&ids],
            )
            .await
            .map_err(fail)?;
        if n > 0 {
            // Every replica's worker may take them.
            tx.execute("SELECT pg_notify($1, 'due')", &[&OUTBOX_CHANNEL])
                .await
                .map_err(fail)?;
        }
        tx.commit().await.map_err(fail)?;
        Ok(n as usize)
    }

    async fn purge(
        &self,
        state: State,
        older_than: Duration,
        domains: &[String],
    ) -> Result<usize, OutboxError> {
        debug_assert!(state != State::Pending);
        let pg = &self.pg;
        let fail = |e| pg.failed("purge", e);
        let mut client = pg.client("purge").await?;
        let tx = client.transaction().await.map_err(fail)?;
        let age = older_than.as_millis().min(i64::MAX as u128) as i64;
        let all = domains.is_empty();
        let messages: Vec<i64> = tx
            .query(
                "DELETE FROM outbox_results
                 WHERE state = $1 AND updated_at < bridge_now_ms() - $2
                   AND ($3 OR domain = ANY($4))
                 RETURNING message_id",
                &[&state.as_str(), &age, &all, &domains],
            )
            .await
            .map_err(fail)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.execute(
            "DELETE FROM outbox_messages m WHERE m.id = ANY($1)
               AND NOT EXISTS (SELECT 1 FROM outbox_results r WHERE r.message_id = m.id)",
            &[&messages],
        )
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        Ok(messages.len())
    }

    async fn stats(&self, with_submitted: bool) -> Result<Stats, OutboxError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("stats", e);
        let client = pg.client("stats").await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT (SELECT COUNT(*) FROM outbox_results WHERE state = 'pending'),
                                (SELECT COUNT(*) FROM outbox_results WHERE state = 'dead'),
                                (SELECT received_at FROM outbox_results WHERE state = 'pending'
                                 ORDER BY id LIMIT 1)",
                    )
                    .await
                    .map_err(fail)?,
                &[],
            )
            .await
            .map_err(fail)?;
        let submitted = if with_submitted {
            let n: i64 = client
                .query_one(
                    "SELECT COUNT(*) FROM outbox_results WHERE state = 'submitted'",
                    &[],
                )
                .await
                .map_err(fail)?
                .get(0);
            Some(n as u64)
        } else {
            None
        };
        Ok(Stats {
            pending: row.get::<_, i64>(0) as u64,
            submitted,
            dead: row.get::<_, i64>(1) as u64,
            oldest_pending_received_at_ms: row.get(2),
        })
    }
}
