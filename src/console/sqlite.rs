//! The console's tables on the embedded store (SQLite).

use std::sync::Arc;

use rusqlite::{OptionalExtension, Transaction, params};

use super::audit::{AuditEntry, Change};
use super::history::{NewVersion, Recorded, Version};
use super::store::ConsoleStore;
use crate::store::StoreError;
use crate::store::migrate::Migration;
use crate::store::sqlite::{Cached, Store};

pub(super) static MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "audit log, mapping versions",
    sql: "
CREATE TABLE IF NOT EXISTS console_audit (
    id        INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    user_name TEXT    NOT NULL,
    via       TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    target    TEXT    NOT NULL,
    detail    TEXT    NOT NULL,
    outcome   TEXT    NOT NULL,
    replica   TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS console_mapping_versions (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    user_name   TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    file        TEXT    NOT NULL,
    before_text TEXT    NOT NULL,
    after_text  TEXT    NOT NULL,
    set_before  TEXT    NOT NULL,
    set_after   TEXT    NOT NULL,
    note        TEXT    NOT NULL,
    golden      TEXT    NOT NULL,
    replica     TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS console_mapping_versions_file
    ON console_mapping_versions(file, id);
",
}];

const AUDIT_COLUMNS: &str = "id, at, user_name, via, action, target, detail, outcome, replica";

const VERSION_COLUMNS: &str = "id, at, user_name, action, file, set_before, set_after, note, \
                               golden, replica, before_text, after_text";

fn read_audit(r: &rusqlite::Row) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        user: r.get(2)?,
        via: r.get(3)?,
        action: r.get(4)?,
        target: r.get(5)?,
        detail: r.get(6)?,
        outcome: r.get(7)?,
        replica: r.get(8)?,
    })
}

fn read_version(r: &rusqlite::Row) -> rusqlite::Result<Version> {
    Ok(Version {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        user: r.get(2)?,
        action: r.get(3)?,
        file: r.get(4)?,
        set_before: r.get(5)?,
        set_after: r.get(6)?,
        note: r.get(7)?,
        golden: r.get(8)?,
        replica: r.get(9)?,
        before_text: r.get(10)?,
        after_text: r.get(11)?,
    })
}

fn latest_version(tx: &Transaction, file: &str) -> rusqlite::Result<Option<Version>> {
    tx.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS} FROM console_mapping_versions WHERE file = ?1
         ORDER BY id DESC LIMIT 1"
    ))?
    .query_row(params![file], read_version)
    .optional()
}

pub(super) struct SqliteConsole {
    store: Arc<Store>,
    replica: String,
}

impl SqliteConsole {
    pub(super) fn new(store: Arc<Store>, replica: String) -> SqliteConsole {
        SqliteConsole { store, replica }
    }
}

#[async_trait::async_trait]
impl ConsoleStore for SqliteConsole {
    async fn record_audit(&self, c: Change) -> Result<i64, StoreError> {
        let replica = self.replica.clone();
        self.store
            .write(move |tx, now| {
                tx.exec(
                    "INSERT INTO console_audit
                         (at, user_name, via, action, target, detail, outcome, replica)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        now, c.user, c.via, c.action, c.target, c.detail, c.outcome, replica
                    ],
                )?;
                Ok(tx.last_insert_rowid())
            })
            .await
    }

    async fn audit(&self, before_id: i64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.store
            .read(move |tx, _| {
                tx.prepare_cached(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM console_audit
                     WHERE ?1 <= 0 OR id < ?1 ORDER BY id DESC LIMIT ?2"
                ))?
                .query_map(params![before_id, limit as i64], read_audit)?
                .collect()
            })
            .await
    }

    async fn record_version(
        &self,
        v: NewVersion,
        latest: Option<i64>,
    ) -> Result<Recorded, StoreError> {
        let replica = self.replica.clone();
        // One writer thread: the check and the insert cannot interleave with another's.
        self.store
            .write(move |tx, now| {
                if let Some(current) = latest_version(tx, &v.file)?
                    && Some(current.id) != latest
                {
                    return Ok(Recorded::Superseded(Box::new(current)));
                }
                tx.exec(
                    "INSERT INTO console_mapping_versions (at, user_name, action, file,
                         before_text, after_text, set_before, set_after, note, golden, replica)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        now,
                        v.user,
                        v.action,
                        v.file,
                        v.before_text,
                        v.after_text,
                        v.set_before,
                        v.set_after,
                        v.note,
                        v.golden,
                        replica
                    ],
                )?;
                Ok(Recorded::Stored(tx.last_insert_rowid()))
            })
            .await
    }

    async fn versions(&self, limit: usize) -> Result<Vec<Version>, StoreError> {
        self.store
            .read(move |tx, _| {
                tx.prepare_cached(&format!(
                    "SELECT {VERSION_COLUMNS} FROM console_mapping_versions
                     ORDER BY id DESC LIMIT ?1"
                ))?
                .query_map(params![limit as i64], read_version)?
                .collect()
            })
            .await
    }

    async fn version(&self, id: i64) -> Result<Option<Version>, StoreError> {
        self.store
            .read(move |tx, _| {
                tx.prepare_cached(&format!(
                    "SELECT {VERSION_COLUMNS} FROM console_mapping_versions WHERE id = ?1"
                ))?
                .query_row(params![id], read_version)
                .optional()
            })
            .await
    }

    async fn latest_version(&self, file: &str) -> Result<Option<Version>, StoreError> {
        let file = file.to_string();
        self.store
            .read(move |tx, _| latest_version(tx, &file))
            .await
    }

    fn replica(&self) -> &str {
        &self.replica
    }

    fn shared(&self) -> bool {
        false
    }
}
