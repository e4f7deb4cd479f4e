//! The feed on PostgreSQL, shared by several replicas.
//!
//! - **One writer per domain and per destination.** `record` and `polled` check, in their
//!   own transaction, that this replica holds the domain's `poll` lease, and `settle` and
//!   `destination_error` the destination's `deliver` lease; the lease row stays locked
//!   until the transaction commits, so a new leader cannot start before the old leader's
//!   last write is in. Two replicas never both record an order as new.
//! - **Events in commit order.** Recording takes a transaction-level advisory lock before
//!   the first event id is drawn, so events are inserted one transaction at a time: an
//!   event with a lower id is always committed before one with a higher id is. A
//!   `WatchOrders` cursor ("events after id N") therefore never skips an event that was
//!   still in flight when the cursor passed it. Recording is a poll's page at a time, so
//!   the lock costs little.
//! - **Notifications** (`event:<id>` after recording, `queued` after a requeue) wake
//!   `WatchOrders` streams and the destination leader on other replicas; they only wake,
//!   the tables decide.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::try_join_all;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{
    Baseline, DeadLetter, DeliveryHistory, DestinationStatus, DueDelivery, Event, EventHistory,
    EventKind, FeedStore, NewEvent, Ordering, Outcome, Tracked, WatchStatus,
};
use crate::store::StoreError;
use crate::store::leader::Role;
use crate::store::migrate::Migration;
use crate::store::postgres::{FEED_CHANNEL, FEED_EVENTS_LOCK, Postgres, query_queue_head};

pub(super) static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "watch state, events, deliveries, destinations",
        sql: "
CREATE TABLE feed_watch (
    domain        TEXT    PRIMARY KEY,
    baselined_at  BIGINT,
    polls         BIGINT  NOT NULL DEFAULT 0,
    last_poll_at  BIGINT,
    last_error    TEXT
);
CREATE TABLE feed_orders (
    domain          TEXT    NOT NULL,
    appointment_id  TEXT    NOT NULL,
    patient_id      TEXT,
    fingerprint     TEXT    NOT NULL,
    document        BYTEA   NOT NULL,
    updated_at      BIGINT  NOT NULL,
    PRIMARY KEY (domain, appointment_id)
);
CREATE TABLE feed_events (
    id               BIGSERIAL PRIMARY KEY,
    domain           TEXT    NOT NULL,
    appointment_id   TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    document         BYTEA   NOT NULL,
    message          TEXT    NOT NULL,
    control_id       TEXT    NOT NULL,
    mapping_version  TEXT    NOT NULL,
    created_at       BIGINT  NOT NULL
);
CREATE INDEX feed_events_domain ON feed_events (domain, id);
CREATE INDEX feed_events_created ON feed_events (created_at);
CREATE TABLE feed_deliveries (
    id               BIGSERIAL PRIMARY KEY,
    destination      TEXT    NOT NULL,
    event_id         BIGINT  NOT NULL REFERENCES feed_events(id),
    order_key        TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT  NOT NULL,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    ack_code         TEXT,
    last_error       TEXT
);
CREATE INDEX feed_deliveries_pending ON feed_deliveries (destination, id) WHERE state = 'pending';
CREATE INDEX feed_deliveries_pending_key ON feed_deliveries (destination, order_key, id)
    WHERE state = 'pending';
CREATE INDEX feed_deliveries_state ON feed_deliveries (destination, state);
CREATE INDEX feed_deliveries_event ON feed_deliveries (event_id);
CREATE TABLE feed_destinations (
    name           TEXT    PRIMARY KEY,
    last_ack_at    BIGINT,
    last_ack_code  TEXT,
    last_error     TEXT,
    last_error_at  BIGINT
);
",
    },
    Migration {
        version: 2,
        description: "the last message sent per order; the mapping version last compared",
        // Each tracked order keeps the last ORM its consumers were sent (taken from the
        // events still retained), so that a new mapping set can be compared against it.
        sql: "
ALTER TABLE feed_orders ADD COLUMN message TEXT;
ALTER TABLE feed_orders ADD COLUMN message_kind TEXT;
ALTER TABLE feed_watch ADD COLUMN mapping_version TEXT;
UPDATE feed_orders o SET (message, message_kind) = (
    SELECT e.message, e.kind FROM feed_events e
    WHERE e.domain = o.domain AND e.appointment_id = o.appointment_id AND e.kind <> 'removed'
    ORDER BY e.id DESC LIMIT 1);
",
    },
    Migration {
        version: 3,
        description: "events by appointment (an order's timeline)",
        sql: "CREATE INDEX IF NOT EXISTS feed_events_appointment ON feed_events (domain, appointment_id, id);",
    },
];

/// One statement's parameters, laid out before the pipelined calls that borrow them.
type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

pub(super) struct PgFeed {
    pg: Arc<Postgres>,
}

impl PgFeed {
    pub(super) fn new(pg: Arc<Postgres>) -> PgFeed {
        PgFeed { pg }
    }
}

/// The ordering key of a delivery: which earlier messages it must wait for.
fn order_key(ordering: Ordering, domain: &str, e: &NewEvent) -> String {
    match (ordering, &e.patient_id) {
        (Ordering::Strict, _) => String::new(),
        (Ordering::PerPatient, Some(p)) => format!("{domain}/p/{p}"),
        _ => format!("{domain}/a/{}", e.appointment_id),
    }
}

const DUE_COLUMNS: &str = "d.id, d.event_id, e.domain, e.appointment_id, e.kind, e.message,
    e.control_id, d.attempts, d.created_at";

fn read_due(r: &Row) -> DueDelivery {
    DueDelivery {
        id: r.get(0),
        event_id: r.get(1),
        domain: r.get(2),
        appointment_id: r.get(3),
        kind: EventKind::parse(r.get(4)),
        message: r.get(5),
        control_id: r.get(6),
        attempts: r.get::<_, i32>(7) as u32,
        created_at_ms: r.get(8),
    }
}

#[async_trait::async_trait]
impl FeedStore for PgFeed {
    async fn latest_event(&self) -> Result<i64, StoreError> {
        let client = self.pg.client("feed_read").await?;
        let row = client
            .query_one("SELECT COALESCE(MAX(id), 0) FROM feed_events", &[])
            .await
            .map_err(|e| self.pg.failed("feed_read", e))?;
        Ok(row.get(0))
    }

    async fn first_event(&self) -> Result<i64, StoreError> {
        let client = self.pg.client("feed_read").await?;
        let row = client
            .query_one("SELECT COALESCE(MIN(id), 0) FROM feed_events", &[])
            .await
            .map_err(|e| self.pg.failed("feed_read", e))?;
        Ok(row.get(0))
    }

    async fn fingerprints(&self, domain: &str) -> Result<HashMap<String, String>, StoreError> {
        let client = self.pg.client("feed_read").await?;
        let rows = client
            .query(
                "SELECT appointment_id, fingerprint FROM feed_orders WHERE domain = $1",
                &[&domain],
            )
            .await
            .map_err(|e| self.pg.failed("feed_read", e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn document(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.pg.client("feed_read").await?;
        let row = client
            .query_opt(
                "SELECT document FROM feed_orders WHERE domain = $1 AND appointment_id = $2",
                &[&domain, &appointment_id],
            )
            .await
            .map_err(|e| self.pg.failed("feed_read", e))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn baselined(&self, domain: &str) -> Result<bool, StoreError> {
        let client = self.pg.client("feed_read").await?;
        let row = client
            .query_opt(
                "SELECT baselined_at FROM feed_watch WHERE domain = $1",
                &[&domain],
            )
            .await
            .map_err(|e| self.pg.failed("feed_read", e))?;
        Ok(row.is_some_and(|r| r.get::<_, Option<i64>>(0).is_some()))
    }

    async fn tracked(
        &self,
        domain: &str,
        appointment_id: Option<&str>,
    ) -> Result<Vec<Tracked>, StoreError> {
        let client = self.pg.client("feed_read").await?;
        let rows = client
            .query(
                "SELECT appointment_id, patient_id, fingerprint, document, message, message_kind
                 FROM feed_orders
                 WHERE domain = $1 AND ($2::text IS NULL OR appointment_id = $2)
                 ORDER BY appointment_id",
                &[&domain, &appointment_id],
            )
            .await
            .map_err(|e| self.pg.failed("feed_read", e))?;
        Ok(rows
            .iter()
            .map(|r| {
                let message: Option<String> = r.get(4);
                let kind: Option<&str> = r.get(5);
                Tracked {
                    appointment_id: r.get(0),
                    patient_id: r.get(1),
                    fingerprint: r.get(2),
                    document: r.get(3),
                    message: message.map(|m| (EventKind::parse(kind.unwrap_or("new")), m)),
                }
            })
            .collect())
    }

    async fn reconciled_version(&self, domain: &str) -> Result<Option<String>, StoreError> {
        let client = self.pg.client("feed_read").await?;
        let row = client
            .query_opt(
                "SELECT mapping_version FROM feed_watch WHERE domain = $1",
                &[&domain],
            )
            .await
            .map_err(|e| self.pg.failed("feed_read", e))?;
        Ok(row.and_then(|r| r.get(0)))
    }

    async fn set_reconciled_version(&self, domain: &str, version: &str) -> Result<(), StoreError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("feed_record", e);
        let mut client = pg.client("feed_record").await?;
        let tx = client.transaction().await.map_err(fail)?;
        pg.fence(&tx, Role::Poll.as_str(), domain).await?;
        tx.execute(
            "INSERT INTO feed_watch (domain, mapping_version) VALUES ($1, $2)
             ON CONFLICT (domain) DO UPDATE SET mapping_version = excluded.mapping_version",
            &[&domain, &version],
        )
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)
    }

    async fn record(
        &self,
        domain: &str,
        events: Vec<NewEvent>,
        baseline: Vec<Baseline>,
        removed: Vec<String>,
        routes: Vec<(String, Ordering)>,
    ) -> Result<Option<i64>, StoreError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("feed_record", e);
        let mut client = pg.client("feed_record").await?;
        let tx = client.transaction().await.map_err(fail)?;
        pg.fence(&tx, Role::Poll.as_str(), domain).await?;
        if !events.is_empty() {
            // Events commit in id order (see the module doc).
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FEED_EVENTS_LOCK])
                .await
                .map_err(fail)?;
        }
        let now: i64 = tx
            .query_one("SELECT bridge_now_ms()", &[])
            .await
            .map_err(fail)?
            .get(0);
        let upsert = tx
            .prepare_cached(
                "INSERT INTO feed_orders AS o (domain, appointment_id, patient_id, fingerprint,
                     document, updated_at, message, message_kind)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (domain, appointment_id) DO UPDATE SET
                     patient_id = excluded.patient_id, fingerprint = excluded.fingerprint,
                     document = excluded.document, updated_at = excluded.updated_at,
                     message = COALESCE(excluded.message, o.message),
                     message_kind = COALESCE(excluded.message_kind, o.message_kind)",
            )
            .await
            .map_err(fail)?;
        let forget = tx
            .prepare_cached("DELETE FROM feed_orders WHERE domain = $1 AND appointment_id = $2")
            .await
            .map_err(fail)?;
        let insert_event = tx
            .prepare_cached(
                "WITH e AS (
                     INSERT INTO feed_events (domain, appointment_id, kind, document, message,
                         control_id, mapping_version, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id),
                 d AS (
                     INSERT INTO feed_deliveries (destination, event_id, order_key, state,
                         next_attempt_at, created_at, updated_at)
                     SELECT r.destination, e.id, r.order_key, 'pending', $8, $8, $8
                     FROM e, unnest($9::text[], $10::text[]) AS r(destination, order_key))
                 SELECT id FROM e",
            )
            .await
            .map_err(fail)?;
        // Statements go out pipelined, in this order, and run in this order. Their
        // parameters are laid out first, since the pipelined calls borrow them.
        let destinations: Vec<&str> = routes.iter().map(|(d, _)| d.as_str()).collect();
        let keys: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                routes
                    .iter()
                    .map(|(_, ordering)| order_key(*ordering, domain, e))
                    .collect()
            })
            .collect();
        let kinds: Vec<&'static str> = events.iter().map(|e| e.kind.as_str()).collect();
        let held: Vec<(Option<&str>, Option<&str>)> = baseline
            .iter()
            .map(|b| match &b.message {
                Some((kind, message)) => (Some(message.as_str()), Some(kind.as_str())),
                None => (None, None),
            })
            .collect();
        let baseline_params: Vec<Params> = baseline
            .iter()
            .zip(&held)
            .map(|(b, (message, kind))| -> Params {
                vec![
                    &domain,
                    &b.appointment_id,
                    &b.patient_id,
                    &b.fingerprint,
                    &b.document,
                    &now,
                    message,
                    kind,
                ]
            })
            .collect();
        try_join_all(baseline_params.iter().map(|p| tx.query(&upsert, p)))
            .await
            .map_err(fail)?;
        let mut event_params: Vec<(bool, Params, Params)> = Vec::with_capacity(events.len());
        for ((e, keys), kind) in events.iter().zip(&keys).zip(&kinds) {
            let removal = e.kind == EventKind::Removed;
            let state: Params = if removal {
                vec![&domain, &e.appointment_id]
            } else {
                vec![
                    &domain,
                    &e.appointment_id,
                    &e.patient_id,
                    &e.fingerprint,
                    &e.document,
                    &now,
                    &e.message,
                    kind,
                ]
            };
            let insert: Params = vec![
                &domain,
                &e.appointment_id,
                kind,
                &e.document,
                &e.message,
                &e.control_id,
                &e.mapping_version,
                &now,
                &destinations,
                keys,
            ];
            event_params.push((removal, state, insert));
        }
        let mut event_writes = Vec::with_capacity(events.len() * 2);
        for (removal, state, insert) in &event_params {
            event_writes.push(tx.query(if *removal { &forget } else { &upsert }, state));
            event_writes.push(tx.query(&insert_event, insert));
        }
        let results = try_join_all(event_writes).await.map_err(fail)?;
        let last: Option<i64> = results
            .iter()
            .skip(1)
            .step_by(2)
            .filter_map(|rows| rows.first().map(|r| r.get(0)))
            .max();
        let forget_params: Vec<Params> = removed
            .iter()
            .map(|id| -> Params { vec![&domain, id] })
            .collect();
        try_join_all(forget_params.iter().map(|p| tx.query(&forget, p)))
            .await
            .map_err(fail)?;
        if let Some(last) = last {
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&FEED_CHANNEL, &format!("event:{last}")],
            )
            .await
            .map_err(fail)?;
        }
        tx.commit().await.map_err(fail)?;
        Ok(last)
    }

    async fn polled(&self, domain: &str, error: Option<String>) -> Result<(), StoreError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("feed_record", e);
        let mut client = pg.client("feed_record").await?;
        let tx = client.transaction().await.map_err(fail)?;
        pg.fence(&tx, Role::Poll.as_str(), domain).await?;
        // A complete poll is the baseline; a failed one leaves the baseline as it was.
        tx.execute(
            "INSERT INTO feed_watch AS w (domain, baselined_at, polls, last_poll_at, last_error)
             SELECT $1, CASE WHEN $2::text IS NULL THEN t.now END, 1, t.now, $2
             FROM (SELECT bridge_now_ms() AS now) t
             ON CONFLICT (domain) DO UPDATE SET polls = w.polls + 1,
                 last_poll_at = excluded.last_poll_at, last_error = excluded.last_error,
                 baselined_at = COALESCE(w.baselined_at, excluded.baselined_at)",
            &[&domain, &error],
        )
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)
    }

    async fn due(
        &self,
        destination: &str,
        strict: bool,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("feed_due", e);
        let mut client = pg.client("feed_due").await?;
        // Strict: the first pending message alone. Otherwise the first pending message of
        // each key, oldest first.
        let sql = if strict {
            format!(
                "SELECT {DUE_COLUMNS} FROM feed_deliveries d
                 JOIN feed_events e ON e.id = d.event_id
                 WHERE d.id = (SELECT id FROM feed_deliveries
                               WHERE destination = $1 AND state = 'pending'
                               ORDER BY id LIMIT 1)
                   AND d.next_attempt_at <= bridge_now_ms()"
            )
        } else {
            format!(
                "SELECT {DUE_COLUMNS} FROM feed_deliveries d
                 JOIN feed_events e ON e.id = d.event_id
                 WHERE d.destination = $1 AND d.state = 'pending'
                   AND d.next_attempt_at <= bridge_now_ms()
                   AND d.id = (
                       SELECT min(p.id) FROM feed_deliveries p
                       WHERE p.destination = d.destination AND p.order_key = d.order_key
                         AND p.state = 'pending')
                 ORDER BY d.id LIMIT $2"
            )
        };
        let limit = limit as i64;
        let params: Params = if strict {
            vec![&destination]
        } else {
            vec![&destination, &limit]
        };
        let rows = query_queue_head(&mut client, &sql, &params)
            .await
            .map_err(fail)?;
        Ok(rows.iter().map(read_due).collect())
    }

    async fn next_due_in(&self, destination: &str) -> Result<Option<Duration>, StoreError> {
        // Only the first pending delivery of each key can go next; one waiting behind an
        // earlier one of its key does not count, however due it is.
        let client = self.pg.client("feed_due").await?;
        let row = client
            .query_one(
                "SELECT GREATEST(MIN(d.next_attempt_at) - bridge_now_ms(), 0)
                 FROM feed_deliveries d
                 WHERE d.destination = $1 AND d.state = 'pending'
                   AND d.id = (SELECT min(p.id) FROM feed_deliveries p
                               WHERE p.destination = d.destination
                                 AND p.order_key = d.order_key AND p.state = 'pending')",
                &[&destination],
            )
            .await
            .map_err(|e| self.pg.failed("feed_due", e))?;
        Ok(row
            .get::<_, Option<i64>>(0)
            .map(|ms| Duration::from_millis(ms as u64)))
    }

    async fn settle(
        &self,
        destination: &str,
        outcomes: Vec<(i64, Outcome)>,
    ) -> Result<(), StoreError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("feed_settle", e);
        let mut client = pg.client("feed_settle").await?;
        let tx = client.transaction().await.map_err(fail)?;
        pg.fence(&tx, Role::Deliver.as_str(), destination).await?;
        let delivered = tx
            .prepare_cached(
                "UPDATE feed_deliveries SET state = 'delivered', attempts = attempts + 1,
                     updated_at = bridge_now_ms(), ack_code = $2, last_error = NULL
                 WHERE id = $1 AND state = 'pending'",
            )
            .await
            .map_err(fail)?;
        let retry = tx
            .prepare_cached(
                "UPDATE feed_deliveries SET attempts = attempts + 1,
                     next_attempt_at = bridge_now_ms() + $2, updated_at = bridge_now_ms(),
                     last_error = $3
                 WHERE id = $1 AND state = 'pending'",
            )
            .await
            .map_err(fail)?;
        let dead = tx
            .prepare_cached(
                "UPDATE feed_deliveries SET state = 'dead', attempts = attempts + 1,
                     updated_at = bridge_now_ms(), ack_code = $2, last_error = $3
                 WHERE id = $1 AND state = 'pending'",
            )
            .await
            .map_err(fail)?;
        let mut last_ack: Option<&str> = None;
        let mut last_error: Option<&str> = None;
        let delays: Vec<i64> = outcomes
            .iter()
            .map(|(_, o)| match o {
                Outcome::Retry { delay, .. } => delay.as_millis() as i64,
                _ => 0,
            })
            .collect();
        let mut params: Vec<(&tokio_postgres::Statement, Params)> = Vec::new();
        for ((id, outcome), delay) in outcomes.iter().zip(&delays) {
            match outcome {
                Outcome::Delivered { ack_code } => {
                    params.push((&delivered, vec![id, ack_code]));
                    if let Some(code) = ack_code {
                        last_ack = Some(code);
                    }
                }
                Outcome::Retry { reason, .. } => {
                    params.push((&retry, vec![id, delay, reason]));
                    last_error = Some(reason);
                }
                Outcome::Dead { reason, ack_code } => {
                    params.push((&dead, vec![id, ack_code, reason]));
                    if let Some(code) = ack_code {
                        last_ack = Some(code);
                    }
                    last_error = Some(reason);
                }
            }
        }
        let writes = params
            .iter()
            .map(|(statement, p)| tx.execute(*statement, p));
        try_join_all(writes).await.map_err(fail)?;
        if let Some(code) = last_ack {
            tx.execute(
                "INSERT INTO feed_destinations (name, last_ack_at, last_ack_code)
                 VALUES ($1, bridge_now_ms(), $2)
                 ON CONFLICT (name) DO UPDATE SET last_ack_at = excluded.last_ack_at,
                     last_ack_code = excluded.last_ack_code",
                &[&destination, &code],
            )
            .await
            .map_err(fail)?;
        }
        if let Some(error) = last_error {
            note_error(&tx, destination, error).await.map_err(fail)?;
        }
        tx.commit().await.map_err(fail)
    }

    async fn destination_error(&self, destination: &str, error: String) -> Result<(), StoreError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("feed_settle", e);
        let mut client = pg.client("feed_settle").await?;
        let tx = client.transaction().await.map_err(fail)?;
        pg.fence(&tx, Role::Deliver.as_str(), destination).await?;
        note_error(&tx, destination, &error).await.map_err(fail)?;
        tx.commit().await.map_err(fail)
    }

    async fn destination_recovered(&self, destination: &str) -> Result<(), StoreError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("feed_settle", e);
        let mut client = pg.client("feed_settle").await?;
        let tx = client.transaction().await.map_err(fail)?;
        pg.fence(&tx, Role::Deliver.as_str(), destination).await?;
        tx.execute(
            "UPDATE feed_destinations SET last_error = NULL, last_error_at = NULL
             WHERE name = $1 AND last_error IS NOT NULL",
            &[&destination],
        )
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)
    }

    async fn events(
        &self,
        domain: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let client = self.pg.client("feed_read").await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT id, domain, appointment_id, kind, document, message,
                             mapping_version, created_at
                         FROM feed_events WHERE domain = $1 AND id > $2 ORDER BY id LIMIT $3",
                    )
                    .await
                    .map_err(|e| self.pg.failed("feed_read", e))?,
                &[&domain, &after_id, &(limit as i64)],
            )
            .await
            .map_err(|e| self.pg.failed("feed_read", e))?;
        Ok(rows
            .iter()
            .map(|r| Event {
                id: r.get(0),
                domain: r.get(1),
                appointment_id: r.get(2),
                kind: EventKind::parse(r.get(3)),
                document: r.get(4),
                message: r.get(5),
                mapping_version: r.get(6),
                created_at_ms: r.get(7),
            })
            .collect())
    }

    async fn destination_status(
        &self,
        names: &[String],
    ) -> Result<Vec<DestinationStatus>, StoreError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("feed_read", e);
        let client = pg.client("feed_read").await?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let mut status = DestinationStatus {
                name: name.clone(),
                ..Default::default()
            };
            for row in client
                .query(
                    "SELECT state, COUNT(*) FROM feed_deliveries WHERE destination = $1
                     GROUP BY state",
                    &[name],
                )
                .await
                .map_err(fail)?
            {
                let n = row.get::<_, i64>(1) as u64;
                match row.get::<_, &str>(0) {
                    "pending" => status.pending = n,
                    "delivered" => status.delivered = n,
                    "dead" => status.dead = n,
                    _ => {}
                }
            }
            status.oldest_pending_at_ms = client
                .query_opt(
                    "SELECT created_at FROM feed_deliveries WHERE destination = $1
                       AND state = 'pending' ORDER BY id LIMIT 1",
                    &[name],
                )
                .await
                .map_err(fail)?
                .map(|r| r.get(0));
            if let Some(r) = client
                .query_opt(
                    "SELECT last_ack_at, last_ack_code, last_error, last_error_at
                     FROM feed_destinations WHERE name = $1",
                    &[name],
                )
                .await
                .map_err(fail)?
            {
                status.last_ack_at_ms = r.get(0);
                status.last_ack_code = r.get(1);
                status.last_error = r.get(2);
                status.last_error_at_ms = r.get(3);
            }
            out.push(status);
        }
        Ok(out)
    }

    async fn watch_status(&self, domains: &[String]) -> Result<Vec<WatchStatus>, StoreError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("feed_read", e);
        let client = pg.client("feed_read").await?;
        let mut out = Vec::with_capacity(domains.len());
        for domain in domains {
            let tracked: i64 = client
                .query_one(
                    "SELECT COUNT(*) FROM feed_orders WHERE domain = $1",
                    &[domain],
                )
                .await
                .map_err(fail)?
                .get(0);
            let mut status = WatchStatus {
                domain: domain.clone(),
                tracked_orders: tracked as u64,
                ..Default::default()
            };
            if let Some(r) = client
                .query_opt(
                    "SELECT baselined_at, polls, last_poll_at, last_error FROM feed_watch
                     WHERE domain = $1",
                    &[domain],
                )
                .await
                .map_err(fail)?
            {
                status.baselined = r.get::<_, Option<i64>>(0).is_some();
                status.polls = r.get::<_, i64>(1) as u64;
                status.last_poll_at_ms = r.get(2);
                status.last_error = r.get(3);
            }
            out.push(status);
        }
        Ok(out)
    }

    async fn requeue(&self, destination: &str, domains: &[String]) -> Result<usize, StoreError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("feed_requeue", e);
        let mut client = pg.client("feed_requeue").await?;
        let tx = client.transaction().await.map_err(fail)?;
        let n = tx
            .execute(
                "UPDATE feed_deliveries SET state = 'pending', attempts = 0,
                     next_attempt_at = bridge_now_ms(), updated_at = bridge_now_ms()
                 WHERE destination = $1 AND state = 'dead'
                   AND event_id IN (SELECT id FROM feed_events WHERE domain = ANY($2))",
                &[&destination, &domains],
            )
            .await
            .map_err(fail)?;
        if n > 0 {
            tx.execute("SELECT pg_notify($1, 'queued')", &[&FEED_CHANNEL])
                .await
                .map_err(fail)?;
        }
        tx.commit().await.map_err(fail)?;
        Ok(n as usize)
    }

    async fn prune(&self, older_than: Duration) -> Result<usize, StoreError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("feed_prune", e);
        let mut client = pg.client("feed_prune").await?;
        let tx = client.transaction().await.map_err(fail)?;
        let age = older_than.as_millis().min(i64::MAX as u128) as i64;
        let cutoff: i64 = tx
            .query_one("SELECT bridge_now_ms() - $1", &[&age])
            .await
            .map_err(fail)?
            .get(0);
        tx.execute(
            "DELETE FROM feed_deliveries WHERE event_id IN (
                 SELECT e.id FROM feed_events e WHERE e.created_at < $1
                   AND NOT EXISTS (SELECT 1 FROM feed_deliveries d
                                   WHERE d.event_id = e.id AND d.state = 'pending'))",
            &[&cutoff],
        )
        .await
        .map_err(fail)?;
        let n = tx
            .execute(
                "DELETE FROM feed_events e WHERE e.created_at < $1
                   AND NOT EXISTS (SELECT 1 FROM feed_deliveries d WHERE d.event_id = e.id)",
                &[&cutoff],
            )
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        Ok(n as usize)
    }

    async fn dead_letters(
        &self,
        destination: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let pg = &self.pg;
        let client = pg.client("feed_read").await?;
        let limit = limit as i64;
        let rows = client
            .query(
                "SELECT d.id, e.domain, e.appointment_id, e.kind, e.control_id, d.attempts,
                        d.ack_code, d.last_error, d.updated_at
                 FROM feed_deliveries d JOIN feed_events e ON e.id = d.event_id
                 WHERE d.destination = $1 AND d.state = 'dead' ORDER BY d.id DESC LIMIT $2",
                &[&destination, &limit],
            )
            .await
            .map_err(|e| pg.failed("feed_read", e))?;
        Ok(rows
            .iter()
            .map(|r| DeadLetter {
                id: r.get(0),
                domain: r.get(1),
                appointment_id: r.get(2),
                kind: EventKind::parse(r.get(3)),
                control_id: r.get(4),
                attempts: r.get::<_, i32>(5) as u32,
                ack_code: r.get(6),
                last_error: r.get(7),
                updated_at_ms: r.get(8),
            })
            .collect())
    }

    async fn tracked_documents(
        &self,
        domain: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let pg = &self.pg;
        let client = pg.client("feed_read").await?;
        let limit = limit as i64;
        let rows = client
            .query(
                "SELECT appointment_id, document FROM feed_orders WHERE domain = $1
                 ORDER BY updated_at DESC LIMIT $2",
                &[&domain, &limit],
            )
            .await
            .map_err(|e| pg.failed("feed_read", e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn order_history(
        &self,
        domain: &str,
        appointment_id: &str,
        limit: usize,
    ) -> Result<Vec<EventHistory>, StoreError> {
        let pg = &self.pg;
        let client = pg.client("feed_read").await?;
        let limit = limit as i64;
        // One statement, so the events and their deliveries come from one snapshot even
        // while the destination leader (on any replica) settles deliveries.
        let rows = client
            .query(
                "WITH ev AS (
                     SELECT id, kind, control_id, mapping_version, created_at FROM feed_events
                     WHERE domain = $1 AND appointment_id = $2 ORDER BY id DESC LIMIT $3)
                 SELECT ev.id, ev.kind, ev.control_id, ev.mapping_version, ev.created_at,
                        d.destination, d.state, d.attempts, d.ack_code, d.last_error,
                        d.updated_at
                 FROM ev LEFT JOIN feed_deliveries d ON d.event_id = ev.id
                 ORDER BY ev.id DESC, d.destination",
                &[&domain, &appointment_id, &limit],
            )
            .await
            .map_err(|e| pg.failed("feed_read", e))?;
        let mut events: Vec<EventHistory> = Vec::new();
        for r in &rows {
            let id: i64 = r.get(0);
            if events.last().is_none_or(|e| e.id != id) {
                events.push(EventHistory {
                    id,
                    kind: EventKind::parse(r.get(1)),
                    control_id: r.get(2),
                    mapping_version: r.get(3),
                    created_at_ms: r.get(4),
                    deliveries: Vec::new(),
                });
            }
            if let Some(destination) = r.get::<_, Option<String>>(5) {
                let event = events.last_mut().expect("pushed above");
                event.deliveries.push(DeliveryHistory {
                    destination,
                    state: r.get(6),
                    attempts: r.get::<_, i32>(7) as u32,
                    ack_code: r.get(8),
                    last_error: r.get(9),
                    updated_at_ms: r.get(10),
                });
            }
        }
        Ok(events)
    }
}

async fn note_error(
    tx: &deadpool_postgres::Transaction<'_>,
    destination: &str,
    error: &str,
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO feed_destinations (name, last_error, last_error_at)
         VALUES ($1, $2, bridge_now_ms())
         ON CONFLICT (name) DO UPDATE SET last_error = excluded.last_error,
             last_error_at = excluded.last_error_at",
        &[&destination, &error],
    )
    .await
}
