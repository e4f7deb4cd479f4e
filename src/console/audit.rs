//! The audit log: who changed what, and when — every retry, purge, promotion, rollback and
//! resend made through the console, and every sign-in. Kept in the store, next to what it
//! describes, so it survives restarts; entries name ids and counts, never patient data.

use std::sync::Arc;

use rusqlite::params;
use serde::Serialize;

use crate::store::{Cached, Store, StoreError};

/// The audit log's table, created by [`Store::open`].
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS console_audit (
    id        INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    user_name TEXT    NOT NULL,
    via       TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    target    TEXT    NOT NULL,
    detail    TEXT    NOT NULL,
    outcome   TEXT    NOT NULL
);
";

/// One change, as recorded.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: i64,
    /// Unix milliseconds (the store's clock).
    pub at_ms: i64,
    pub user: String,
    /// How the user authenticated: `session`, `token` or `certificate`.
    pub via: String,
    /// What was done, e.g. `outbox.retry`, `outbox.purge`, `feed.retry`, `login`.
    pub action: String,
    /// What it was done to: ids, a destination, a mapping version.
    pub target: String,
    /// The request's parameters and counts (no patient data).
    pub detail: String,
    /// `ok`, or why it failed.
    pub outcome: String,
}

/// A change about to be recorded.
#[derive(Debug, Clone)]
pub struct Change {
    pub user: String,
    pub via: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub outcome: String,
}

/// The audit log in the store.
#[derive(Clone)]
pub struct AuditLog {
    store: Arc<Store>,
}

impl AuditLog {
    pub fn new(store: Arc<Store>) -> AuditLog {
        AuditLog { store }
    }

    /// Records a change (the time is the store's).
    pub async fn record(&self, change: Change) -> Result<i64, StoreError> {
        self.store
            .write(move |tx, now| {
                tx.exec(
                    "INSERT INTO console_audit (at, user_name, via, action, target, detail, outcome)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        now,
                        change.user,
                        change.via,
                        change.action,
                        change.target,
                        change.detail,
                        change.outcome
                    ],
                )?;
                Ok(tx.last_insert_rowid())
            })
            .await
    }

    /// The newest entries first, those older than `before_id` when it is positive.
    pub async fn list(&self, before_id: i64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.store
            .read(move |tx, _| {
                let mut stmt = tx.prepare_cached(
                    "SELECT id, at, user_name, via, action, target, detail, outcome
                     FROM console_audit WHERE ?1 <= 0 OR id < ?1 ORDER BY id DESC LIMIT ?2",
                )?;
                stmt.query_map(params![before_id, limit.max(1) as i64], |r| {
                    Ok(AuditEntry {
                        id: r.get(0)?,
                        at_ms: r.get(1)?,
                        user: r.get(2)?,
                        via: r.get(3)?,
                        action: r.get(4)?,
                        target: r.get(5)?,
                        detail: r.get(6)?,
                        outcome: r.get(7)?,
                    })
                })?
                .collect()
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changes_are_kept_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(Store::open(&dir.path().join("b.db")).unwrap());
        for n in 0..3 {
            log.record(Change {
                user: "ops".into(),
                via: "session".into(),
                action: "outbox.retry".into(),
                target: format!("{n}"),
                detail: String::new(),
                outcome: "ok".into(),
            })
            .await
            .unwrap();
        }
        let all = log.list(0, 10).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(),
            ["2", "1", "0"]
        );
        let older = log.list(all[0].id, 10).await.unwrap();
        assert_eq!(older.len(), 2);
        assert!(older[0].at_ms > 0);
    }
}
