//! The outbox on the embedded store (SQLite): its tables and statements. The statements
//! run on the store's writer thread, inside the transaction it opens for each batch.
//!
//! One process owns the file, so claims are kept in memory: a result being submitted is
//! simply not handed out again until its outcome is recorded.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::{
    Admission, Attachment, Due, Entry, EntryFilter, NewMessage, OutboxError, OutboxStore, Receipt,
    Settled, Source, State, Stats,
};
use crate::store::migrate::Migration;
use crate::store::sqlite::{Cached, Store};

pub(super) static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "messages, results, attachments",
        sql: SCHEMA_V1,
    },
    Migration {
        version: 2,
        description: "results by their input's id (search by MSH-10)",
        sql: "CREATE INDEX IF NOT EXISTS results_source ON results(source_id);",
    },
];

/// The tables as they were before versions were kept per component; `IF NOT EXISTS`, so
/// that files of that time take the migration as already done.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id            INTEGER PRIMARY KEY,
    source        TEXT    NOT NULL,
    body          BLOB    NOT NULL,
    received_at   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    id                 INTEGER PRIMARY KEY,
    idempotency_key    TEXT    NOT NULL UNIQUE,
    message_id         INTEGER NOT NULL REFERENCES messages(id),
    domain             TEXT    NOT NULL,
    appointment_id     TEXT    NOT NULL,
    source_id          TEXT    NOT NULL,
    group_index        INTEGER NOT NULL,
    report_status      TEXT    NOT NULL,
    state              TEXT    NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    received_at        INTEGER NOT NULL,
    first_attempt_at   INTEGER,
    next_attempt_at    INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    last_error         TEXT,
    error_kind         TEXT,
    qubs_request_id    TEXT,
    report_guid        TEXT,
    qubs_report_status TEXT,
    reported_at_utc    TEXT
);
CREATE INDEX IF NOT EXISTS results_state ON results(state, id);
CREATE INDEX IF NOT EXISTS results_appointment ON results(domain, appointment_id, id);
CREATE TABLE IF NOT EXISTS attachments (
    result_id     INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    file_name     TEXT    NOT NULL,
    content_type  TEXT    NOT NULL,
    content       BLOB    NOT NULL,
    PRIMARY KEY (result_id, seq)
);
";

/// Stores a message and its results, unless they are already stored (a retransmission), or
/// a preliminary result would land after a final one for the same appointment.
fn admit(tx: &Transaction, m: &NewMessage, now: i64) -> rusqlite::Result<Admission> {
    // A retransmission: every key already known. (A key is content-derived, so a partial
    // match cannot happen for the same message; treat any match as a retransmission.)
    let mut existing = Vec::new();
    for r in &m.results {
        if let Some(id) = tx
            .row(
                "SELECT id FROM results WHERE idempotency_key = ?1",
                [&r.key],
                |row| row.get::<_, i64>(0),
            )
            .optional()?
        {
            existing.push(id);
        }
    }
    if !existing.is_empty() {
        return Ok(Admission::Duplicate { ids: existing });
    }
    for (i, r) in m.results.iter().enumerate() {
        if r.report_status != "preliminary" {
            continue;
        }
        let final_id: Option<i64> = tx
            .row(
                "SELECT id FROM results WHERE domain = ?1 AND appointment_id = ?2
                   AND report_status = 'final' AND state IN ('pending', 'submitted')
                 ORDER BY id DESC LIMIT 1",
                params![r.domain, r.appointment_id],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(final_id) = final_id {
            return Ok(Admission::PreliminaryAfterFinal { index: i, final_id });
        }
    }
    tx.exec(
        "INSERT INTO messages (source, body, received_at) VALUES (?1, ?2, ?3)",
        params![m.source.as_str(), m.body, now],
    )?;
    let message_id = tx.last_insert_rowid();
    let mut ids = Vec::with_capacity(m.results.len());
    for r in &m.results {
        tx.exec(
            "INSERT INTO results (idempotency_key, message_id, domain, appointment_id, source_id,
                 group_index, report_status, state, received_at, next_attempt_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8, ?8, ?8)",
            params![
                r.key,
                message_id,
                r.domain,
                r.appointment_id,
                m.source_id,
                r.group,
                r.report_status,
                now
            ],
        )?;
        let id = tx.last_insert_rowid();
        for (seq, a) in r.attachments.iter().enumerate() {
            tx.exec(
                "INSERT INTO attachments (result_id, seq, file_name, content_type, content)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, seq as i64, a.file_name, a.content_type, a.content],
            )?;
        }
        ids.push(id);
    }
    Ok(Admission::Stored { ids })
}

/// Up to `limit` results due now, oldest first, at most one per appointment and never one
/// that waits behind an older unsettled result of its appointment (results apply in order).
fn due(tx: &Transaction, now: i64, limit: usize, busy: &[i64]) -> rusqlite::Result<Vec<Due>> {
    // Walks pending results in id order on the (state, id) index and stops at the limit,
    // so the cost does not grow with the backlog behind the first due ones.
    let mut stmt = tx.prepare_cached(
        "SELECT r.id FROM results r INDEXED BY results_state
         WHERE r.state = 'pending' AND r.next_attempt_at <= ?1
           AND NOT EXISTS (SELECT 1 FROM results p
                           WHERE p.domain = r.domain AND p.appointment_id = r.appointment_id
                             AND p.state = 'pending' AND p.id < r.id)
         ORDER BY r.id LIMIT ?2",
    )?;
    let ids: Vec<i64> = stmt
        .query_map(params![now, (limit + busy.len()) as i64], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for id in ids.into_iter().filter(|id| !busy.contains(id)).take(limit) {
        let entry = entry(tx, id)?.expect("selected row exists");
        let (source, body): (String, Vec<u8>) = tx.row(
            "SELECT m.source, m.body FROM messages m JOIN results r ON r.message_id = m.id
             WHERE r.id = ?1",
            [id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let mut stmt = tx.prepare_cached(
            "SELECT file_name, content_type, content FROM attachments
             WHERE result_id = ?1 ORDER BY seq",
        )?;
        let attachments = stmt
            .query_map([id], |row| {
                Ok(Attachment {
                    file_name: row.get(0)?,
                    content_type: row.get(1)?,
                    content: row.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        out.push(Due {
            entry,
            source: Source::parse(&source),
            body,
            attachments,
            claimed_at_ms: now,
        });
    }
    Ok(out)
}

fn settle(tx: &Transaction, id: i64, settled: &Settled, now: i64) -> rusqlite::Result<()> {
    match settled {
        Settled::Submitted(r) => tx.exec(
            "UPDATE results SET state = 'submitted', attempts = attempts + 1, updated_at = ?2,
                 first_attempt_at = COALESCE(first_attempt_at, ?2), last_error = NULL,
                 error_kind = NULL, report_guid = ?3, qubs_report_status = ?4,
                 reported_at_utc = ?5
             WHERE id = ?1",
            params![id, now, r.report_guid, r.report_status, r.reported_at_utc],
        )?,
        Settled::Dead {
            kind,
            reason,
            qubs_request_id,
        } => tx.exec(
            "UPDATE results SET state = 'dead', attempts = attempts + 1, updated_at = ?2,
                 first_attempt_at = COALESCE(first_attempt_at, ?2), last_error = ?3,
                 error_kind = ?4, qubs_request_id = ?5
             WHERE id = ?1",
            params![id, now, reason, kind, qubs_request_id],
        )?,
    };
    Ok(())
}

fn retry_later(
    tx: &Transaction,
    id: i64,
    next_at: i64,
    reason: &str,
    qubs_request_id: Option<&str>,
    now: i64,
) -> rusqlite::Result<()> {
    tx.exec(
        "UPDATE results SET attempts = attempts + 1, next_attempt_at = ?2, updated_at = ?5,
             first_attempt_at = COALESCE(first_attempt_at, ?5), last_error = ?3,
             error_kind = 'transient', qubs_request_id = ?4
         WHERE id = ?1 AND state = 'pending'",
        params![id, next_at, reason, qubs_request_id, now],
    )?;
    Ok(())
}

const ENTRY_COLUMNS: &str = "r.id, r.idempotency_key, r.domain, r.appointment_id, m.source,
    r.source_id, r.group_index, r.report_status, r.state, r.attempts, r.received_at,
    r.first_attempt_at, r.next_attempt_at, r.updated_at, r.last_error, r.error_kind,
    r.qubs_request_id, r.report_guid, r.qubs_report_status, r.reported_at_utc,
    (SELECT COUNT(*) FROM attachments a WHERE a.result_id = r.id)";

fn read_entry(row: &Row) -> rusqlite::Result<Entry> {
    let source: String = row.get(4)?;
    let state: String = row.get(8)?;
    Ok(Entry {
        id: row.get(0)?,
        idempotency_key: row.get(1)?,
        domain: row.get(2)?,
        appointment_id: row.get(3)?,
        source: Source::parse(&source),
        source_id: row.get(5)?,
        group: row.get(6)?,
        report_status: row.get(7)?,
        state: State::parse(&state),
        attempts: row.get(9)?,
        received_at_ms: row.get(10)?,
        first_attempt_at_ms: row.get(11)?,
        next_attempt_at_ms: row.get(12)?,
        updated_at_ms: row.get(13)?,
        last_error: row.get(14)?,
        error_kind: row.get(15)?,
        qubs_request_id: row.get(16)?,
        receipt: match row.get::<_, Option<String>>(17)? {
            Some(report_guid) => Some(Receipt {
                report_guid,
                report_status: row.get(18)?,
                reported_at_utc: row.get(19)?,
            }),
            None => None,
        },
        attachments: row.get(20)?,
    })
}

fn entry(tx: &Transaction, id: i64) -> rusqlite::Result<Option<Entry>> {
    tx.row(
        &format!(
            "SELECT {ENTRY_COLUMNS} FROM results r JOIN messages m ON m.id = r.message_id
             WHERE r.id = ?1"
        ),
        [id],
        read_entry,
    )
    .optional()
}

fn list(tx: &Transaction, f: &EntryFilter) -> rusqlite::Result<Vec<Entry>> {
    let mut sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM results r JOIN messages m ON m.id = r.message_id
         WHERE r.id > ?1"
    );
    let mut args: Vec<rusqlite::types::Value> = vec![f.after_id.into()];
    if let Some(state) = f.state {
        args.push(state.as_str().to_string().into());
        sql.push_str(&format!(" AND r.state = ?{}", args.len()));
    }
    domain_filter(&mut sql, &mut args, "r.domain", &f.domains);
    if let Some(a) = &f.appointment_id {
        args.push(a.clone().into());
        sql.push_str(&format!(" AND r.appointment_id = ?{}", args.len()));
    }
    if let Some(id) = &f.source_id {
        args.push(id.clone().into());
        sql.push_str(&format!(" AND r.source_id = ?{}", args.len()));
    }
    if let Some(before) = f.before_id {
        args.push(before.into());
        sql.push_str(&format!(" AND r.id < ?{}", args.len()));
    }
    args.push((f.limit.max(1) as i64).into());
    let order = if f.newest_first { "DESC" } else { "ASC" };
    sql.push_str(&format!(" ORDER BY r.id {order} LIMIT ?{}", args.len()));
    let mut stmt = tx.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), read_entry)?;
    rows.collect()
}

/// Puts dead letters (or one) back in the queue, due now, with a fresh retry horizon.
fn requeue(tx: &Transaction, ids: &[i64], now: i64) -> rusqlite::Result<usize> {
    let mut n = 0;
    for id in ids {
        n += tx.exec(
            "UPDATE results SET state = 'pending', next_attempt_at = ?2, updated_at = ?2,
                 first_attempt_at = NULL, error_kind = NULL
             WHERE id = ?1 AND state = 'dead'",
            params![id, now],
        )?;
    }
    Ok(n)
}

/// Deletes settled results (never pending ones) and messages no result refers to.
fn purge(
    tx: &Transaction,
    state: State,
    older_than: i64,
    domains: &[String],
) -> rusqlite::Result<usize> {
    debug_assert!(state != State::Pending);
    let mut sql = String::from("DELETE FROM results WHERE state = ?1 AND updated_at < ?2");
    let mut args: Vec<rusqlite::types::Value> =
        vec![state.as_str().to_string().into(), older_than.into()];
    domain_filter(&mut sql, &mut args, "domain", domains);
    let n = tx.execute(&sql, rusqlite::params_from_iter(args))?;
    tx.exec(
        "DELETE FROM messages WHERE NOT EXISTS
             (SELECT 1 FROM results r WHERE r.message_id = messages.id)",
        [],
    )?;
    Ok(n)
}

/// Adds ` AND <column> IN (...)` over `domains` (nothing when empty: every domain).
fn domain_filter(
    sql: &mut String,
    args: &mut Vec<rusqlite::types::Value>,
    column: &str,
    domains: &[String],
) {
    if domains.is_empty() {
        return;
    }
    let mut marks = Vec::with_capacity(domains.len());
    for d in domains {
        args.push(d.clone().into());
        marks.push(format!("?{}", args.len()));
    }
    sql.push_str(&format!(" AND {column} IN ({})", marks.join(", ")));
}

fn stats(tx: &Transaction, with_submitted: bool) -> rusqlite::Result<Stats> {
    let count = |state: &str| -> rusqlite::Result<u64> {
        tx.row(
            "SELECT COUNT(*) FROM results WHERE state = ?1",
            [state],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n as u64)
    };
    // Ids grow with arrival, so the first pending id is the oldest.
    let oldest: Option<i64> = tx
        .row(
            "SELECT received_at FROM results WHERE state = 'pending' ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(Stats {
        pending: count("pending")?,
        submitted: if with_submitted {
            Some(count("submitted")?)
        } else {
            None
        },
        dead: count("dead")?,
        oldest_pending_received_at_ms: oldest,
    })
}

/// The state of every result of a message's keys, for answering a retransmission.
fn entries(tx: &Transaction, ids: &[i64]) -> rusqlite::Result<Vec<Entry>> {
    ids.iter()
        .filter_map(|id| entry(tx, *id).transpose())
        .collect()
}

/// The outbox in the embedded store.
pub(super) struct SqliteOutbox {
    store: Arc<Store>,
    /// Results being submitted by this process.
    claimed: Mutex<HashSet<i64>>,
}

impl SqliteOutbox {
    pub(super) fn new(store: Arc<Store>) -> SqliteOutbox {
        SqliteOutbox {
            store,
            claimed: Mutex::new(HashSet::new()),
        }
    }

    fn unclaim(&self, id: i64) {
        self.claimed.lock().expect("claims").remove(&id);
    }
}

#[async_trait::async_trait]
impl OutboxStore for SqliteOutbox {
    async fn admit(&self, message: NewMessage) -> Result<Admission, OutboxError> {
        self.store
            .write(move |tx, now| admit(tx, &message, now))
            .await
    }

    async fn claim(&self, limit: usize) -> Result<Vec<Due>, OutboxError> {
        let busy: Vec<i64> = self
            .claimed
            .lock()
            .expect("claims")
            .iter()
            .copied()
            .collect();
        let due = self
            .store
            .read(move |tx, now| due(tx, now, limit, &busy))
            .await?;
        let mut claimed = self.claimed.lock().expect("claims");
        claimed.extend(due.iter().map(|d| d.entry.id));
        Ok(due)
    }

    async fn release(&self, id: i64) {
        self.unclaim(id);
    }

    async fn settle(&self, id: i64, settled: &Settled) -> Result<(), OutboxError> {
        let settled = settled.clone();
        let stored = self
            .store
            .write(move |tx, now| settle(tx, id, &settled, now))
            .await;
        self.unclaim(id);
        stored
    }

    async fn retry_later(
        &self,
        id: i64,
        delay: Duration,
        reason: &str,
        qubs_request_id: Option<&str>,
    ) -> Result<(), OutboxError> {
        let (reason, qubs_request_id) = (reason.to_string(), qubs_request_id.map(str::to_string));
        let delay = delay.as_millis() as i64;
        let stored = self
            .store
            .write(move |tx, now| {
                retry_later(
                    tx,
                    id,
                    now + delay,
                    &reason,
                    qubs_request_id.as_deref(),
                    now,
                )
            })
            .await;
        self.unclaim(id);
        stored
    }

    async fn entries(&self, ids: &[i64]) -> Result<Vec<Entry>, OutboxError> {
        let ids = ids.to_vec();
        self.store.read(move |tx, _| entries(tx, &ids)).await
    }

    async fn list(&self, filter: &EntryFilter) -> Result<Vec<Entry>, OutboxError> {
        let filter = filter.clone();
        self.store.read(move |tx, _| list(tx, &filter)).await
    }

    async fn message(&self, id: i64) -> Result<Option<(Source, Vec<u8>)>, OutboxError> {
        self.store
            .read(move |tx, _| {
                let mut stmt = tx.prepare_cached(
                    "SELECT m.source, m.body FROM messages m JOIN results r ON r.message_id = m.id
                     WHERE r.id = ?1",
                )?;
                let mut rows = stmt.query([id])?;
                match rows.next()? {
                    Some(row) => {
                        let source: String = row.get(0)?;
                        Ok(Some((Source::parse(&source), row.get(1)?)))
                    }
                    None => Ok(None),
                }
            })
            .await
    }

    async fn requeue(&self, ids: &[i64]) -> Result<usize, OutboxError> {
        let ids = ids.to_vec();
        self.store
            .write(move |tx, now| requeue(tx, &ids, now))
            .await
    }

    async fn purge(
        &self,
        state: State,
        older_than: Duration,
        domains: &[String],
    ) -> Result<usize, OutboxError> {
        let domains = domains.to_vec();
        let older_than = older_than.as_millis().min(i64::MAX as u128) as i64;
        self.store
            .write(move |tx, now| purge(tx, state, now.saturating_sub(older_than), &domains))
            .await
    }

    async fn stats(&self, with_submitted: bool) -> Result<Stats, OutboxError> {
        self.store
            .read(move |tx, _| stats(tx, with_submitted))
            .await
    }
}
