//! The feed on the embedded store (SQLite): its tables and statements, run on the store's
//! writer thread. One process owns the file: it leads every domain and destination.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{OptionalExtension, Transaction, params};

use super::{
    Baseline, DeadLetter, DeliveryHistory, DestinationStatus, DueDelivery, Event, EventHistory,
    EventKind, FeedStore, NewEvent, Ordering, Outcome, Tracked, WatchStatus,
};
use crate::store::StoreError;
use crate::store::migrate::Migration;
use crate::store::sqlite::{Cached, Store};

pub(super) static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "watch state, events, deliveries, destinations",
        sql: SCHEMA_V1,
    },
    Migration {
        version: 2,
        description: "the last message sent per order; the mapping version last compared",
        sql: SCHEMA_V2,
    },
    Migration {
        version: 3,
        description: "events by appointment (an order's timeline)",
        sql: "CREATE INDEX IF NOT EXISTS feed_events_appointment
                  ON feed_events(domain, appointment_id, id);",
    },
];

/// The tables as they were before versions were kept per component; `IF NOT EXISTS`, so
/// that files of that time take the migration as already done.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS feed_watch (
    domain        TEXT    PRIMARY KEY,
    baselined_at  INTEGER,
    polls         INTEGER NOT NULL DEFAULT 0,
    last_poll_at  INTEGER,
    last_error    TEXT
);
CREATE TABLE IF NOT EXISTS feed_orders (
    domain          TEXT    NOT NULL,
    appointment_id  TEXT    NOT NULL,
    patient_id      TEXT,
    fingerprint     TEXT    NOT NULL,
    document        BLOB    NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (domain, appointment_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS feed_events (
    id               INTEGER PRIMARY KEY,
    domain           TEXT    NOT NULL,
    appointment_id   TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    document         BLOB    NOT NULL,
    message          TEXT    NOT NULL,
    control_id       TEXT    NOT NULL,
    mapping_version  TEXT    NOT NULL,
    created_at       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS feed_events_domain ON feed_events(domain, id);
CREATE TABLE IF NOT EXISTS feed_deliveries (
    id               INTEGER PRIMARY KEY,
    destination      TEXT    NOT NULL,
    event_id         INTEGER NOT NULL REFERENCES feed_events(id),
    order_key        TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    ack_code         TEXT,
    last_error       TEXT
);
CREATE INDEX IF NOT EXISTS feed_deliveries_state ON feed_deliveries(destination, state, id);
CREATE INDEX IF NOT EXISTS feed_deliveries_key ON feed_deliveries(destination, order_key, state, id);
CREATE INDEX IF NOT EXISTS feed_deliveries_event ON feed_deliveries(event_id);
CREATE TABLE IF NOT EXISTS feed_destinations (
    name           TEXT    PRIMARY KEY,
    last_ack_at    INTEGER,
    last_ack_code  TEXT,
    last_error     TEXT,
    last_error_at  INTEGER
);
";

/// Each tracked order keeps the last ORM its consumers were sent (taken from the events
/// still retained), so that a new mapping set can be compared against it.
const SCHEMA_V2: &str = "
ALTER TABLE feed_orders ADD COLUMN message TEXT;
ALTER TABLE feed_orders ADD COLUMN message_kind TEXT;
ALTER TABLE feed_watch ADD COLUMN mapping_version TEXT;
UPDATE feed_orders SET (message, message_kind) = (
    SELECT e.message, e.kind FROM feed_events e
    WHERE e.domain = feed_orders.domain AND e.appointment_id = feed_orders.appointment_id
      AND e.kind <> 'removed'
    ORDER BY e.id DESC LIMIT 1);
";

fn latest_event(tx: &Transaction) -> rusqlite::Result<i64> {
    tx.row("SELECT COALESCE(MAX(id), 0) FROM feed_events", [], |r| {
        r.get(0)
    })
}

fn first_event(tx: &Transaction) -> rusqlite::Result<i64> {
    tx.row("SELECT COALESCE(MIN(id), 0) FROM feed_events", [], |r| {
        r.get(0)
    })
}

fn fingerprints(tx: &Transaction, domain: &str) -> rusqlite::Result<HashMap<String, String>> {
    let mut stmt =
        tx.prepare_cached("SELECT appointment_id, fingerprint FROM feed_orders WHERE domain = ?1")?;
    stmt.query_map([domain], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

fn document(
    tx: &Transaction,
    domain: &str,
    appointment_id: &str,
) -> rusqlite::Result<Option<Vec<u8>>> {
    tx.row(
        "SELECT document FROM feed_orders WHERE domain = ?1 AND appointment_id = ?2",
        [domain, appointment_id],
        |r| r.get(0),
    )
    .optional()
}

fn baselined(tx: &Transaction, domain: &str) -> rusqlite::Result<bool> {
    Ok(tx
        .row(
            "SELECT baselined_at FROM feed_watch WHERE domain = ?1",
            [domain],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()?
        .flatten()
        .is_some())
}

fn tracked(
    tx: &Transaction,
    domain: &str,
    appointment_id: Option<&str>,
) -> rusqlite::Result<Vec<Tracked>> {
    let mut stmt = tx.prepare_cached(
        "SELECT appointment_id, patient_id, fingerprint, document, message, message_kind
         FROM feed_orders WHERE domain = ?1 AND (?2 IS NULL OR appointment_id = ?2)
         ORDER BY appointment_id",
    )?;
    stmt.query_map(params![domain, appointment_id], |r| {
        let message: Option<String> = r.get(4)?;
        let kind: Option<String> = r.get(5)?;
        Ok(Tracked {
            appointment_id: r.get(0)?,
            patient_id: r.get(1)?,
            fingerprint: r.get(2)?,
            document: r.get(3)?,
            message: message.map(|m| (EventKind::parse(kind.as_deref().unwrap_or("new")), m)),
        })
    })?
    .collect()
}

fn reconciled_version(tx: &Transaction, domain: &str) -> rusqlite::Result<Option<String>> {
    Ok(tx
        .row(
            "SELECT mapping_version FROM feed_watch WHERE domain = ?1",
            [domain],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}

fn set_reconciled_version(tx: &Transaction, domain: &str, version: &str) -> rusqlite::Result<()> {
    tx.exec(
        "INSERT INTO feed_watch (domain, mapping_version) VALUES (?1, ?2)
         ON CONFLICT (domain) DO UPDATE SET mapping_version = ?2",
        params![domain, version],
    )?;
    Ok(())
}

/// The ordering key of a delivery: which earlier messages it must wait for.
fn order_key(ordering: Ordering, domain: &str, e: &NewEvent) -> String {
    match (ordering, &e.patient_id) {
        (Ordering::Strict, _) => String::new(),
        (Ordering::PerPatient, Some(p)) => format!("{domain}/p/{p}"),
        _ => format!("{domain}/a/{}", e.appointment_id),
    }
}

/// Stores events with a delivery per route, baseline rows, and forgets removed orders.
/// Returns the last event id written.
fn record(
    tx: &Transaction,
    domain: &str,
    events: &[NewEvent],
    baseline: &[Baseline],
    removed: &[String],
    routes: &[(String, Ordering)],
    now: i64,
) -> rusqlite::Result<Option<i64>> {
    let mut upsert = tx.prepare_cached(
        "INSERT INTO feed_orders (domain, appointment_id, patient_id, fingerprint, document,
             updated_at, message, message_kind)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (domain, appointment_id) DO UPDATE SET patient_id = excluded.patient_id,
             fingerprint = excluded.fingerprint, document = excluded.document,
             updated_at = excluded.updated_at,
             message = COALESCE(excluded.message, feed_orders.message),
             message_kind = COALESCE(excluded.message_kind, feed_orders.message_kind)",
    )?;
    let mut insert_event = tx.prepare_cached(
        "INSERT INTO feed_events (domain, appointment_id, kind, document, message, control_id,
             mapping_version, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut insert_delivery = tx.prepare_cached(
        "INSERT INTO feed_deliveries (destination, event_id, order_key, state, next_attempt_at,
             created_at, updated_at)
         VALUES (?1, ?2, ?3, 'pending', ?4, ?4, ?4)",
    )?;
    let mut forget =
        tx.prepare_cached("DELETE FROM feed_orders WHERE domain = ?1 AND appointment_id = ?2")?;
    for b in baseline {
        upsert.execute(params![
            domain,
            b.appointment_id,
            b.patient_id,
            b.fingerprint,
            b.document,
            now,
            b.message.as_ref().map(|(_, m)| m),
            b.message.as_ref().map(|(k, _)| k.as_str()),
        ])?;
    }
    let mut last = None;
    for e in events {
        if e.kind == EventKind::Removed {
            forget.execute([domain, e.appointment_id.as_str()])?;
        } else {
            upsert.execute(params![
                domain,
                e.appointment_id,
                e.patient_id,
                e.fingerprint,
                e.document,
                now,
                e.message,
                e.kind.as_str(),
            ])?;
        }
        insert_event.execute(params![
            domain,
            e.appointment_id,
            e.kind.as_str(),
            e.document,
            e.message,
            e.control_id,
            e.mapping_version,
            now
        ])?;
        let id = tx.last_insert_rowid();
        for (destination, ordering) in routes {
            insert_delivery.execute(params![
                destination,
                id,
                order_key(*ordering, domain, e),
                now
            ])?;
        }
        last = Some(id);
    }
    for id in removed {
        forget.execute([domain, id.as_str()])?;
    }
    Ok(last)
}

fn polled(tx: &Transaction, domain: &str, error: Option<&str>, now: i64) -> rusqlite::Result<()> {
    // A complete poll is the baseline; a failed one leaves the baseline as it was.
    tx.exec(
        "INSERT INTO feed_watch (domain, baselined_at, polls, last_poll_at, last_error)
         VALUES (?1, CASE WHEN ?2 IS NULL THEN ?3 END, 1, ?3, ?2)
         ON CONFLICT (domain) DO UPDATE SET polls = polls + 1, last_poll_at = ?3,
             last_error = ?2,
             baselined_at = COALESCE(baselined_at, CASE WHEN ?2 IS NULL THEN ?3 END)",
        params![domain, error, now],
    )?;
    Ok(())
}

const DUE_COLUMNS: &str = "d.id, d.event_id, e.domain, e.appointment_id, e.kind, e.message,
    e.control_id, d.attempts, d.created_at";

fn read_due(r: &rusqlite::Row) -> rusqlite::Result<DueDelivery> {
    Ok(DueDelivery {
        id: r.get(0)?,
        event_id: r.get(1)?,
        domain: r.get(2)?,
        appointment_id: r.get(3)?,
        kind: EventKind::parse(&r.get::<_, String>(4)?),
        message: r.get(5)?,
        control_id: r.get(6)?,
        attempts: r.get(7)?,
        created_at_ms: r.get(8)?,
    })
}

/// Deliveries of `destination` due at `now`, oldest first: the first pending one of each
/// key whose time has come (a message never overtakes an earlier one of its key). Strict
/// ordering is one key for the whole destination.
fn due(
    tx: &Transaction,
    destination: &str,
    strict: bool,
    now: i64,
    limit: usize,
) -> rusqlite::Result<Vec<DueDelivery>> {
    if strict {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT {DUE_COLUMNS} FROM feed_deliveries d JOIN feed_events e ON e.id = d.event_id
             WHERE d.destination = ?1 AND d.state = 'pending' ORDER BY d.id LIMIT 1"
        ))?;
        let first = stmt.query_row([destination], read_due).optional()?;
        let next_at: Option<i64> = tx
            .row(
                "SELECT next_attempt_at FROM feed_deliveries WHERE destination = ?1
                   AND state = 'pending' ORDER BY id LIMIT 1",
                [destination],
                |r| r.get(0),
            )
            .optional()?;
        return Ok(first
            .filter(|_| next_at.is_some_and(|t| t <= now))
            .into_iter()
            .collect());
    }
    // Walks pending deliveries in id order on the (destination, state, id) index and stops
    // at the limit, so the cost does not grow with the queue behind them.
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {DUE_COLUMNS} FROM feed_deliveries d INDEXED BY feed_deliveries_state
             JOIN feed_events e ON e.id = d.event_id
         WHERE d.destination = ?1 AND d.state = 'pending' AND d.next_attempt_at <= ?2
           AND NOT EXISTS (SELECT 1 FROM feed_deliveries p
                           WHERE p.destination = d.destination AND p.order_key = d.order_key
                             AND p.state = 'pending' AND p.id < d.id)
         ORDER BY d.id LIMIT ?3"
    ))?;
    stmt.query_map(params![destination, now, limit as i64], read_due)?
        .collect()
}

fn next_due_at(tx: &Transaction, destination: &str) -> rusqlite::Result<Option<i64>> {
    // Only the first pending delivery of each key can go next.
    tx.row(
        "SELECT MIN(d.next_attempt_at) FROM feed_deliveries d
         WHERE d.destination = ?1 AND d.state = 'pending'
           AND NOT EXISTS (SELECT 1 FROM feed_deliveries p
                           WHERE p.destination = d.destination AND p.order_key = d.order_key
                             AND p.state = 'pending' AND p.id < d.id)",
        [destination],
        |r| r.get(0),
    )
}

fn settle(
    tx: &Transaction,
    destination: &str,
    outcomes: &[(i64, Outcome)],
    now: i64,
) -> rusqlite::Result<()> {
    let mut last_ack: Option<&str> = None;
    let mut last_error: Option<&str> = None;
    for (id, outcome) in outcomes {
        match outcome {
            Outcome::Delivered { ack_code } => {
                tx.prepare_cached(
                    "UPDATE feed_deliveries SET state = 'delivered', attempts = attempts + 1,
                         updated_at = ?2, ack_code = ?3, last_error = NULL
                     WHERE id = ?1 AND state = 'pending'",
                )?
                .execute(params![id, now, ack_code])?;
                if let Some(code) = ack_code {
                    last_ack = Some(code);
                }
            }
            Outcome::Retry { delay, reason } => {
                tx.prepare_cached(
                    "UPDATE feed_deliveries SET attempts = attempts + 1, next_attempt_at = ?2,
                         updated_at = ?3, last_error = ?4
                     WHERE id = ?1 AND state = 'pending'",
                )?
                .execute(params![
                    id,
                    now + delay.as_millis() as i64,
                    now,
                    reason
                ])?;
                last_error = Some(reason);
            }
            Outcome::Dead { reason, ack_code } => {
                tx.prepare_cached(
                    "UPDATE feed_deliveries SET state = 'dead', attempts = attempts + 1,
                         updated_at = ?2, ack_code = ?3, last_error = ?4
                     WHERE id = ?1 AND state = 'pending'",
                )?
                .execute(params![id, now, ack_code, reason])?;
                if let Some(code) = ack_code {
                    last_ack = Some(code);
                }
                last_error = Some(reason);
            }
        }
    }
    if let Some(code) = last_ack {
        tx.exec(
            "INSERT INTO feed_destinations (name, last_ack_at, last_ack_code) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET last_ack_at = ?2, last_ack_code = ?3",
            params![destination, now, code],
        )?;
    }
    if let Some(error) = last_error {
        destination_error(tx, destination, error, now)?;
    }
    Ok(())
}

/// Clears a destination's last error: it has delivered since.
fn destination_recovered(tx: &Transaction, destination: &str) -> rusqlite::Result<()> {
    tx.exec(
        "UPDATE feed_destinations SET last_error = NULL, last_error_at = NULL
         WHERE name = ?1 AND last_error IS NOT NULL",
        params![destination],
    )?;
    Ok(())
}

fn destination_error(
    tx: &Transaction,
    destination: &str,
    error: &str,
    now: i64,
) -> rusqlite::Result<()> {
    tx.exec(
        "INSERT INTO feed_destinations (name, last_error, last_error_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET last_error = ?2, last_error_at = ?3",
        params![destination, error, now],
    )?;
    Ok(())
}

fn events(
    tx: &Transaction,
    domain: &str,
    after_id: i64,
    limit: usize,
) -> rusqlite::Result<Vec<Event>> {
    let mut stmt = tx.prepare_cached(
        "SELECT id, domain, appointment_id, kind, document, message, mapping_version, created_at
         FROM feed_events WHERE domain = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    stmt.query_map(params![domain, after_id, limit as i64], |r| {
        Ok(Event {
            id: r.get(0)?,
            domain: r.get(1)?,
            appointment_id: r.get(2)?,
            kind: EventKind::parse(&r.get::<_, String>(3)?),
            document: r.get(4)?,
            message: r.get(5)?,
            mapping_version: r.get(6)?,
            created_at_ms: r.get(7)?,
        })
    })?
    .collect()
}

fn destination_status(tx: &Transaction, name: &str) -> rusqlite::Result<DestinationStatus> {
    let count = |state: &str| -> rusqlite::Result<u64> {
        tx.row(
            "SELECT COUNT(*) FROM feed_deliveries WHERE destination = ?1 AND state = ?2",
            [name, state],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n as u64)
    };
    let oldest: Option<i64> = tx
        .row(
            "SELECT created_at FROM feed_deliveries WHERE destination = ?1 AND state = 'pending'
             ORDER BY id LIMIT 1",
            [name],
            |r| r.get(0),
        )
        .optional()?;
    let mut status = DestinationStatus {
        name: name.to_string(),
        pending: count("pending")?,
        delivered: count("delivered")?,
        dead: count("dead")?,
        oldest_pending_at_ms: oldest,
        ..Default::default()
    };
    if let Some((at, code, error, error_at)) = tx
        .row(
            "SELECT last_ack_at, last_ack_code, last_error, last_error_at
             FROM feed_destinations WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?
    {
        status.last_ack_at_ms = at;
        status.last_ack_code = code;
        status.last_error = error;
        status.last_error_at_ms = error_at;
    }
    Ok(status)
}

/// A destination's dead letters, newest first.
fn dead_letters(
    tx: &Transaction,
    destination: &str,
    limit: usize,
) -> rusqlite::Result<Vec<DeadLetter>> {
    tx.prepare_cached(
        "SELECT d.id, e.domain, e.appointment_id, e.kind, e.control_id, d.attempts, d.ack_code,
                d.last_error, d.updated_at
         FROM feed_deliveries d JOIN feed_events e ON e.id = d.event_id
         WHERE d.destination = ?1 AND d.state = 'dead' ORDER BY d.id DESC LIMIT ?2",
    )?
    .query_map(params![destination, limit as i64], |r| {
        Ok(DeadLetter {
            id: r.get(0)?,
            domain: r.get(1)?,
            appointment_id: r.get(2)?,
            kind: EventKind::parse(&r.get::<_, String>(3)?),
            control_id: r.get(4)?,
            attempts: r.get(5)?,
            ack_code: r.get(6)?,
            last_error: r.get(7)?,
            updated_at_ms: r.get(8)?,
        })
    })?
    .collect()
}

/// The orders the feed tracks in `domain` (the worklist as last polled), most recently
/// changed first: appointment id and the document the mappings read.
fn tracked_documents(
    tx: &Transaction,
    domain: &str,
    limit: usize,
) -> rusqlite::Result<Vec<(String, Vec<u8>)>> {
    tx.prepare_cached(
        "SELECT appointment_id, document FROM feed_orders WHERE domain = ?1
         ORDER BY updated_at DESC LIMIT ?2",
    )?
    .query_map(params![domain, limit as i64], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?
    .collect()
}

/// One appointment's retained events, newest first, each with its deliveries.
fn order_history(
    tx: &Transaction,
    domain: &str,
    appointment_id: &str,
    limit: usize,
) -> rusqlite::Result<Vec<EventHistory>> {
    let mut events: Vec<EventHistory> = tx
        .prepare_cached(
            "SELECT id, kind, control_id, mapping_version, created_at FROM feed_events
             WHERE domain = ?1 AND appointment_id = ?2 ORDER BY id DESC LIMIT ?3",
        )?
        .query_map(params![domain, appointment_id, limit as i64], |r| {
            Ok(EventHistory {
                id: r.get(0)?,
                kind: EventKind::parse(&r.get::<_, String>(1)?),
                control_id: r.get(2)?,
                mapping_version: r.get(3)?,
                created_at_ms: r.get(4)?,
                deliveries: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt = tx.prepare_cached(
        "SELECT destination, state, attempts, ack_code, last_error, updated_at
         FROM feed_deliveries WHERE event_id = ?1 ORDER BY destination",
    )?;
    for e in &mut events {
        e.deliveries = stmt
            .query_map(params![e.id], |r| {
                Ok(DeliveryHistory {
                    destination: r.get(0)?,
                    state: r.get(1)?,
                    attempts: r.get(2)?,
                    ack_code: r.get(3)?,
                    last_error: r.get(4)?,
                    updated_at_ms: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(events)
}

fn watch_status(tx: &Transaction, domain: &str) -> rusqlite::Result<WatchStatus> {
    let tracked: i64 = tx.row(
        "SELECT COUNT(*) FROM feed_orders WHERE domain = ?1",
        [domain],
        |r| r.get(0),
    )?;
    let mut status = WatchStatus {
        domain: domain.to_string(),
        tracked_orders: tracked as u64,
        ..Default::default()
    };
    if let Some((baselined, polls, at, error)) = tx
        .row(
            "SELECT baselined_at, polls, last_poll_at, last_error FROM feed_watch WHERE domain = ?1",
            [domain],
            |r| {
                Ok((
                    r.get::<_, Option<i64>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                ))
            },
        )
        .optional()?
    {
        status.baselined = baselined.is_some();
        status.polls = polls as u64;
        status.last_poll_at_ms = at;
        status.last_error = error;
    }
    Ok(status)
}

/// Deletes events created before `older_than` none of whose deliveries is pending, with
/// their settled deliveries.
fn prune(tx: &Transaction, older_than: i64) -> rusqlite::Result<usize> {
    tx.exec(
        "DELETE FROM feed_deliveries WHERE event_id IN (
             SELECT e.id FROM feed_events e WHERE e.created_at < ?1
               AND NOT EXISTS (SELECT 1 FROM feed_deliveries d
                               WHERE d.event_id = e.id AND d.state = 'pending'))",
        [older_than],
    )?;
    tx.exec(
        "DELETE FROM feed_events WHERE created_at < ?1
           AND NOT EXISTS (SELECT 1 FROM feed_deliveries d WHERE d.event_id = feed_events.id)",
        [older_than],
    )
}

/// Puts a destination's dead letters of `domains` back in its queue, due now.
fn requeue(
    tx: &Transaction,
    destination: &str,
    domains: &[String],
    now: i64,
) -> rusqlite::Result<usize> {
    let mut n = 0;
    for domain in domains {
        n += tx.exec(
            "UPDATE feed_deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?3,
                 updated_at = ?3
             WHERE destination = ?1 AND state = 'dead'
               AND event_id IN (SELECT id FROM feed_events WHERE domain = ?2)",
            params![destination, domain, now],
        )?;
    }
    Ok(n)
}

/// The feed in the embedded store.
pub(super) struct SqliteFeed {
    store: Arc<Store>,
}

impl SqliteFeed {
    pub(super) fn new(store: Arc<Store>) -> SqliteFeed {
        SqliteFeed { store }
    }
}

#[async_trait::async_trait]
impl FeedStore for SqliteFeed {
    async fn latest_event(&self) -> Result<i64, StoreError> {
        self.store.read(|tx, _| latest_event(tx)).await
    }

    async fn first_event(&self) -> Result<i64, StoreError> {
        self.store.read(|tx, _| first_event(tx)).await
    }

    async fn fingerprints(&self, domain: &str) -> Result<HashMap<String, String>, StoreError> {
        let domain = domain.to_string();
        self.store
            .read(move |tx, _| fingerprints(tx, &domain))
            .await
    }

    async fn document(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (domain, id) = (domain.to_string(), appointment_id.to_string());
        self.store
            .read(move |tx, _| document(tx, &domain, &id))
            .await
    }

    async fn baselined(&self, domain: &str) -> Result<bool, StoreError> {
        let domain = domain.to_string();
        self.store.read(move |tx, _| baselined(tx, &domain)).await
    }

    async fn tracked(
        &self,
        domain: &str,
        appointment_id: Option<&str>,
    ) -> Result<Vec<Tracked>, StoreError> {
        let (domain, id) = (domain.to_string(), appointment_id.map(str::to_string));
        self.store
            .read(move |tx, _| tracked(tx, &domain, id.as_deref()))
            .await
    }

    async fn reconciled_version(&self, domain: &str) -> Result<Option<String>, StoreError> {
        let domain = domain.to_string();
        self.store
            .read(move |tx, _| reconciled_version(tx, &domain))
            .await
    }

    async fn set_reconciled_version(&self, domain: &str, version: &str) -> Result<(), StoreError> {
        let (domain, version) = (domain.to_string(), version.to_string());
        self.store
            .write(move |tx, _| set_reconciled_version(tx, &domain, &version))
            .await
    }

    async fn record(
        &self,
        domain: &str,
        events: Vec<NewEvent>,
        baseline: Vec<Baseline>,
        removed: Vec<String>,
        routes: Vec<(String, Ordering)>,
    ) -> Result<Option<i64>, StoreError> {
        let domain = domain.to_string();
        self.store
            .write(move |tx, now| record(tx, &domain, &events, &baseline, &removed, &routes, now))
            .await
    }

    async fn polled(&self, domain: &str, error: Option<String>) -> Result<(), StoreError> {
        let domain = domain.to_string();
        self.store
            .write(move |tx, now| polled(tx, &domain, error.as_deref(), now))
            .await
    }

    async fn due(
        &self,
        destination: &str,
        strict: bool,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let destination = destination.to_string();
        self.store
            .read(move |tx, now| due(tx, &destination, strict, now, limit))
            .await
    }

    async fn next_due_in(&self, destination: &str) -> Result<Option<Duration>, StoreError> {
        let destination = destination.to_string();
        self.store
            .read(move |tx, now| {
                Ok(next_due_at(tx, &destination)?
                    .map(|at| Duration::from_millis((at - now).max(0) as u64)))
            })
            .await
    }

    async fn settle(
        &self,
        destination: &str,
        outcomes: Vec<(i64, Outcome)>,
    ) -> Result<(), StoreError> {
        let destination = destination.to_string();
        self.store
            .write(move |tx, now| settle(tx, &destination, &outcomes, now))
            .await
    }

    async fn destination_error(&self, destination: &str, error: String) -> Result<(), StoreError> {
        let destination = destination.to_string();
        self.store
            .write(move |tx, now| destination_error(tx, &destination, &error, now))
            .await
    }

    async fn destination_recovered(&self, destination: &str) -> Result<(), StoreError> {
        let destination = destination.to_string();
        self.store
            .write(move |tx, _| destination_recovered(tx, &destination))
            .await
    }

    async fn events(
        &self,
        domain: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let domain = domain.to_string();
        self.store
            .read(move |tx, _| events(tx, &domain, after_id, limit))
            .await
    }

    async fn destination_status(
        &self,
        names: &[String],
    ) -> Result<Vec<DestinationStatus>, StoreError> {
        let names = names.to_vec();
        self.store
            .read(move |tx, _| names.iter().map(|n| destination_status(tx, n)).collect())
            .await
    }

    async fn watch_status(&self, domains: &[String]) -> Result<Vec<WatchStatus>, StoreError> {
        let domains = domains.to_vec();
        self.store
            .read(move |tx, _| domains.iter().map(|d| watch_status(tx, d)).collect())
            .await
    }

    async fn requeue(&self, destination: &str, domains: &[String]) -> Result<usize, StoreError> {
        let (destination, domains) = (destination.to_string(), domains.to_vec());
        self.store
            .write(move |tx, now| requeue(tx, &destination, &domains, now))
            .await
    }

    async fn prune(&self, older_than: Duration) -> Result<usize, StoreError> {
        let age = older_than.as_millis().min(i64::MAX as u128) as i64;
        self.store
            .write(move |tx, now| prune(tx, now.saturating_sub(age)))
            .await
    }

    async fn dead_letters(
        &self,
        destination: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let destination = destination.to_string();
        self.store
            .read(move |tx, _| dead_letters(tx, &destination, limit))
            .await
    }

    async fn tracked_documents(
        &self,
        domain: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let domain = domain.to_string();
        self.store
            .read(move |tx, _| tracked_documents(tx, &domain, limit))
            .await
    }

    async fn order_history(
        &self,
        domain: &str,
        appointment_id: &str,
        limit: usize,
    ) -> Result<Vec<EventHistory>, StoreError> {
        let (domain, id) = (domain.to_string(), appointment_id.to_string());
        self.store
            .read(move |tx, _| order_history(tx, &domain, &id, limit))
            .await
    }
}
